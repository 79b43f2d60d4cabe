"""TF Serving's REST API for our SavedModel exports: request routing, model calls and status/metadata bodies.

It is generic over SavedModels like TF Serving: every integer folder under `--model_base_path` is loaded (the
highest is the default), and signatures, dtypes and shapes are read from each loaded model. Endpoints, request and
response bodies, error bodies (`{"error": "..."}`) and status codes follow TF Serving's `http_rest_api_handler.cc`
and `json_tensor.cc`, so the same requests work against the `tensorflow/serving` container:

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    signature_def map, TF Serving's JSON shape
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     {"instances": ...} rows or {"inputs": ...} columns
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify    {"examples": [{feature: value|list}, ...]}

Deliberate differences: non-finite float inputs (NaN, Infinity) are parsed as TF Serving parses them but then
refused with 400, since no ECG holds them; bodies over `--max_request_bytes` get 413; paths outside /v1/ get a JSON
404; long JSON values quoted in error messages are shortened. Requests run in parallel on a thread pool (one
model call per request; TF Serving's --enable_batching merges them instead).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ecg_tfx.core import compat
from ecg_tfx.serving import contract
from ecg_tfx.serving.errors import ServingError, invalid_argument, not_found
from ecg_tfx.serving.rest.json_tensors import (
    INT64_MAX,
    classify_examples,
    parse_json_object,
    predict_inputs,
    predict_response,
    signature_name_of,
    tensor_to_json,
)
from ecg_tfx.serving.rest.servables import Model, Servable

DEFAULT_SIGNATURE = "serving_default"

# TF Serving's request paths (http_rest_api_util.cc), matched case-insensitively as it does.
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                          re.I)

# tf.errors codes -> HTTP status, as TF Serving's http_server.cc maps them.
_HTTP_STATUS = {
    tf.errors.CANCELLED: 499, tf.errors.UNKNOWN: 500, tf.errors.INVALID_ARGUMENT: 400,
    tf.errors.DEADLINE_EXCEEDED: 504, tf.errors.NOT_FOUND: 404, tf.errors.ALREADY_EXISTS: 409,
    tf.errors.PERMISSION_DENIED: 403, tf.errors.RESOURCE_EXHAUSTED: 429, tf.errors.FAILED_PRECONDITION: 400,
    tf.errors.ABORTED: 409, tf.errors.OUT_OF_RANGE: 400, tf.errors.UNIMPLEMENTED: 501, tf.errors.INTERNAL: 500,
    tf.errors.UNAVAILABLE: 503, tf.errors.DATA_LOSS: 500, tf.errors.UNAUTHENTICATED: 401,
}


def _check_inputs(tensors: Mapping[str, np.ndarray], function: Any, signature: str) -> None:
    """Refuses inputs whose shape the signature cannot take, and non-finite float values."""
    specs = function.structured_input_signature[1]
    for name, array in tensors.items():
        spec = specs[name]
        if not spec.shape.is_compatible_with(array.shape):
            expected = [-1 if d is None else d for d in spec.shape.as_list()]
            raise invalid_argument(f"input '{name}' of signature '{signature}' must have shape {expected} "
                                   f"(-1: any size), got {list(array.shape)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():  # any model's input; ours check it in-graph too
            raise invalid_argument(contract.NON_FINITE.format(name))


def _op_error_message(error: tf.errors.OpError) -> str:
    """The kernel's own message, as TF Serving reports it, without eager mode's 'Graph execution error' wrapper."""
    message = error.message.split("<stack traces unavailable>\n", 1)[-1]
    return re.sub(r"\s*\[Op:__inference_\w+\]$", "", message).strip()


def run_signature(servable: Servable, signature: str, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Calls a signature; TensorFlow errors become ServingErrors with TF Serving's status codes."""
    function = servable.functions.get(signature)
    if function is None:
        raise invalid_argument(f'Serving signature name: "{signature}" not found in signature def')
    _check_inputs(tensors, function, signature)
    try:
        outputs = function(**{name: tf.constant(array) for name, array in tensors.items()})
    except tf.errors.OpError as error:
        raise ServingError(_HTTP_STATUS.get(error.error_code, 500), _op_error_message(error)) from None
    except (TypeError, ValueError) as error:  # arguments the signature's binding refuses
        raise invalid_argument(str(error)) from None
    return {name: value.numpy() for name, value in outputs.items()}


def classify(servable: Servable, signature: str, examples: Sequence[bytes]) -> dict:
    """TF Serving's Classify on a classify signature: {'results': [[[label, score], ...] per example]}."""
    name = signature or DEFAULT_SIGNATURE
    signature_def = servable.signature_defs.get(name)
    if signature_def is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    if signature_def.method_name != tf.saved_model.CLASSIFY_METHOD_NAME:
        raise invalid_argument("Expected classification signature method_name to be "
                               f"{tf.saved_model.CLASSIFY_METHOD_NAME}. Was: {signature_def.method_name}")
    if list(signature_def.inputs) != ["inputs"]:
        raise invalid_argument("Expected one input Tensor named 'inputs'.")
    outputs = run_signature(servable, name, {"inputs": np.array(examples, dtype=object)})
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        raise invalid_argument('Expected classification signature outputs to contain at least one of "classes" or '
                               '"scores".')
    for key, value in (("classes", classes), ("scores", scores)):
        if value is not None and (value.ndim != 2 or value.shape[0] != len(examples)):
            raise invalid_argument(f"Expected {key} Tensor of shape [batch_size num_classes] with batch size "
                                   f"{len(examples)}. Got: {list(value.shape)}")
    reference = classes if classes is not None else scores
    labels = tensor_to_json(classes) if classes is not None else [[""] * reference.shape[1]] * len(examples)
    values = tensor_to_json(scores) if scores is not None else [[0.0] * reference.shape[1]] * len(examples)
    return {"results": [[list(pair) for pair in zip(row_labels, row_scores)]
                        for row_labels, row_scores in zip(labels, values)]}


def status_response(model: Model, version: int | None) -> dict:
    """GetModelStatusResponse as JSON: every loaded version (newest first) or the one asked for."""
    if version is not None and version not in model.servables:
        raise not_found(f"Could not find version {version} of model {model.name}")
    versions = [version] if version is not None else sorted(model.servables, reverse=True)
    return {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in versions]}


def metadata_response(model: Model, servable: Servable) -> dict:
    """GetModelMetadataResponse as TF Serving writes it: model_spec plus the SavedModel's signature_def map."""
    signature_defs = {name: compat.message_to_dict(signature_def, with_defaults=True)
                      for name, signature_def in servable.signature_defs.items()}
    return {"model_spec": {"name": model.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": signature_defs}}}


# --- HTTP -------------------------------------------------------------------------------------------------------


class RestApi:
    """Dispatches TF Serving REST paths to the loaded models; every failure becomes a ServingError."""

    def __init__(self, models: Mapping[str, Model]):
        self.models = dict(models)

    def _model(self, name: str, request: str) -> Model:
        if name not in self.models:
            raise not_found(f"Could not find any versions of model {name}" if request == "status"
                            else f"Servable not found for request: Latest({name})")
        return self.models[name]

    def _servable(self, name: str, version: int | None, label: str | None) -> tuple[Model, Servable]:
        if label is not None and (name not in self.models or label not in self.models[name].labels):
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        if name not in self.models:
            spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise not_found(f"Servable not found for request: {spec}")
        model = self.models[name]
        return model, model.servable(version, label)

    def handle(self, method: str, path: str, body: bytes) -> dict:
        """The JSON response of one request (raising ServingError for an error response)."""
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        pattern = {"POST": _PREDICTION_PATH, "GET": _STATUS_PATH}.get(method)
        match = pattern.fullmatch(path) if pattern else None
        if match is None:
            raise malformed
        name, version_text, label, verb = match.groups()
        name = urllib.parse.unquote(name) if name else name
        label = urllib.parse.unquote(label) if label else None
        version = None
        if version_text:
            version = int(version_text)
            if version > INT64_MAX:
                raise invalid_argument(f"Failed to convert version: {version_text} to numeric.")
        if method == "GET":
            if not name:
                raise invalid_argument("Missing model name in request.")
            if verb:
                return metadata_response(*self._servable(name, version, label))
            return status_response(self._model(name, "status"), version)
        verb = verb.lower()
        if verb == "regress":
            raise ServingError(501, "This server implements predict and classify; regress is not supported")
        doc = parse_json_object(body)
        signature = signature_name_of(doc)
        if verb == "classify":
            examples = classify_examples(doc)
            return classify(self._servable(name, version, label)[1], signature, examples)
        servable = self._servable(name, version, label)[1]
        signature = signature or DEFAULT_SIGNATURE
        if signature not in servable.signature_defs:
            raise invalid_argument(f'Serving signature name: "{signature}" not found in signature def')
        infos = servable.signature_defs[signature].inputs
        if not infos:
            raise invalid_argument(f"Failed to get input map for signature: {signature}")
        tensors, row = predict_inputs(doc, infos)
        return predict_response(run_signature(servable, signature, tensors), row)

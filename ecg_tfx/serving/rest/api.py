"""TF Serving's REST API for our SavedModel exports: request routing, model calls and status/metadata bodies.

It is generic over SavedModels like TF Serving: every integer folder under `--model_base_path` is loaded (the
highest is the default), and signatures, dtypes and shapes are read from each loaded model. Endpoints, request and
response bodies, error bodies (`{"error": "..."}`) and status codes follow TF Serving's `http_rest_api_handler.cc`
and `json_tensor.cc`, so the same requests work against the `tensorflow/serving` container:

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    signature_def map, TF Serving's JSON shape
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     {"instances": ...} rows or {"inputs": ...} columns
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify    {"examples": [{feature: value|list}, ...]}
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:regress     400, as for any model without a regression signature

Deliberate differences: non-finite float inputs (NaN, Infinity) are parsed as TF Serving parses them but then
refused with 400, since no ECG holds them; bodies over `--max_request_bytes` get 413; paths outside /v1/ get a JSON
404; long JSON values quoted in error messages are shortened. Requests run in parallel on a thread pool; model
calls go through the servable's batcher when it has one (`serving.batching`, like TF Serving's --enable_batching).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

from ecg_tfx.core import compat
from ecg_tfx.serving.errors import invalid_argument
from ecg_tfx.serving.model_requests import (
    DEFAULT_SIGNATURE,
    classify,
    find_model,
    find_servable,
    regress,
    run_signature,
    status_response,
)
from ecg_tfx.serving.rest.json_tensors import (
    INT64_MAX,
    classify_examples,
    parse_json_object,
    predict_inputs,
    predict_response,
    signature_name_of,
    tensor_to_json,
)
from ecg_tfx.serving.servables import Model, Servable

# TF Serving's request paths (http_rest_api_util.cc), matched case-insensitively as it does.
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                          re.I)


def metadata_response(model_name: str, servable: Servable) -> dict:
    """GetModelMetadataResponse as TF Serving writes it: model_spec plus the SavedModel's signature_def map."""
    signature_defs = {name: compat.message_to_dict(signature_def, with_defaults=True)
                      for name, signature_def in servable.signature_defs.items()}
    return {"model_spec": {"name": model_name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": signature_defs}}}


# --- HTTP -------------------------------------------------------------------------------------------------------


class RestApi:
    """Dispatches TF Serving REST paths to the loaded models; every failure becomes a ServingError."""

    def __init__(self, models: Mapping[str, Model]):
        self.models = dict(models)

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
                return metadata_response(name, find_servable(self.models, name, version, label))
            return status_response(find_model(self.models, name), version)
        verb = verb.lower()
        doc = parse_json_object(body)
        signature = signature_name_of(doc)
        if verb == "regress":  # read as TF Serving reads it, then refused for the signature (`regress`)
            classify_examples(doc)
            regress(find_servable(self.models, name, version, label), signature)
        if verb == "classify":
            examples = classify_examples(doc)
            labels, scores = classify(find_servable(self.models, name, version, label), signature, examples)
            return {"results": [[list(pair) for pair in zip(row_labels, row_scores)]
                                for row_labels, row_scores in zip(labels, tensor_to_json(scores))]}
        servable = find_servable(self.models, name, version, label)
        signature = signature or DEFAULT_SIGNATURE
        if signature not in servable.signature_defs:
            raise invalid_argument(f'Serving signature name: "{signature}" not found in signature def')
        infos = servable.signature_defs[signature].inputs
        if not infos:
            raise invalid_argument(f"Failed to get input map for signature: {signature}")
        tensors, row = predict_inputs(doc, infos)
        return predict_response(run_signature(servable, signature, tensors), row)

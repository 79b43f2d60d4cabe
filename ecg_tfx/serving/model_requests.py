"""What a request does whatever its transport (REST or gRPC), as TF Serving does it: find the servable, check and
run a signature, classify, and the status answer. Errors are ServingErrors worded as TF Serving's."""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
import tensorflow as tf

from ecg_tfx.serving import contract
from ecg_tfx.serving.errors import CODES, from_code, invalid_argument, not_found
from ecg_tfx.serving.servables import Model, Servable

DEFAULT_SIGNATURE = "serving_default"


def find_model(models: Mapping[str, Model], name: str) -> Model:
    """The model a status request names."""
    if name not in models:
        raise not_found(f"Could not find any versions of model {name}")
    return models[name]


def find_servable(models: Mapping[str, Model], name: str, version: int | None, label: str | None) -> Servable:
    """The servable a predict, classify or metadata request names (a version, a label or the latest)."""
    if label is not None and (name not in models or label not in models[name].labels):
        raise invalid_argument(f"Unrecognized servable version label: {label}")
    if name not in models:
        spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        raise not_found(f"Servable not found for request: {spec}")
    return models[name].servable(version, label)


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


def _call(function: Any, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One model call; TensorFlow errors become ServingErrors with TF Serving's status codes."""
    try:
        outputs = function(**{name: tf.constant(array) for name, array in tensors.items()})
    except tf.errors.OpError as error:
        raise from_code(CODES[error.error_code], _op_error_message(error)) from None
    except (TypeError, ValueError) as error:  # arguments the signature's binding refuses
        raise invalid_argument(str(error)) from None
    return {name: value.numpy() for name, value in outputs.items()}


def batch_plan(servable: Servable, function: Any, signature: str,
               tensors: Mapping[str, np.ndarray]) -> tuple[Hashable, int] | None:
    """The queue key and the most rows of a merged call for a request that may be batched, else None.

    A request batches with others of the same servable, signature, dtypes and shapes but the first (rows) when every
    input of the signature takes rows first and it sends the same number of rows in each. `serving_default`
    requests of our exports also share their one sample rate (one per call), and a merged call holds at most the
    input contract's seconds of ECG per call.
    """
    specs = function.structured_input_signature[1]
    row_counts = {array.shape[0] if array.ndim else 0 for array in tensors.values()}
    rows_first = all(specs[name].shape.rank and specs[name].shape[0] is None for name in tensors)
    if len(row_counts) != 1 or 0 in row_counts or not rows_first:
        return None
    key = [servable.path, signature, *sorted((name, array.dtype.str, array.shape[1:])
                                             for name, array in tensors.items())]
    max_rows = servable.batcher.parameters.max_batch_size
    contract = servable.contract
    if signature == DEFAULT_SIGNATURE and contract is not None and {"ecg", "sample_rate"} == set(tensors):
        rates = np.unique(tensors["sample_rate"])
        if len(rates) != 1 or not rates[0] > 0:
            return None  # the model's own checks answer it, alone
        key.append(float(rates[0]))
        seconds = tensors["ecg"].shape[1] / float(rates[0])
        max_rows = min(max_rows, int(contract.max_request_seconds // seconds) if seconds > 0 else 0)
    return tuple(key), max_rows


def run_signature(servable: Servable, signature: str, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Calls a signature, merged with concurrent requests of its kind when the servable has a batcher; TensorFlow
    errors become ServingErrors with TF Serving's status codes."""
    function = servable.functions.get(signature)
    if function is None:
        raise invalid_argument(f'Serving signature name: "{signature}" not found in signature def')
    expected = set(servable.signature_defs[signature].inputs)
    if set(tensors) != expected:
        raise invalid_argument(
            f"input size does not match signature: {len(tensors)}!={len(expected)} len({{{','.join(sorted(tensors))}}})"
            f" != len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(set(tensors) - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - set(tensors)))}}}.")
    _check_inputs(tensors, function, signature)
    call = functools.partial(_call, function)
    plan = batch_plan(servable, function, signature, tensors) if servable.batcher is not None else None
    if plan is None:
        return call(tensors)
    return servable.batcher.run(*plan, tensors, call)


def _method_signature(servable: Servable, signature: str, method_name: str, kind: str) -> tuple[str, Any]:
    """The name and SignatureDef a classify or regress request names, checked to be of `method_name`, with TF
    Serving's errors (`kind`: 'classification' or 'regression')."""
    name = signature or DEFAULT_SIGNATURE
    signature_def = servable.signature_defs.get(name)
    if signature_def is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    if signature_def.method_name != method_name:
        raise invalid_argument(f"Expected {kind} signature method_name to be {method_name}. Was: "
                               f"{signature_def.method_name}")
    return name, signature_def


def classify(servable: Servable, signature: str, examples: Sequence[bytes]) -> tuple[list[list[str]], np.ndarray]:
    """TF Serving's Classify on a classify signature: the class labels and float32 scores [example, class]."""
    name, signature_def = _method_signature(servable, signature, tf.saved_model.CLASSIFY_METHOD_NAME, "classification")
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
    shape = (classes if classes is not None else scores).shape
    labels = ([[label.decode("utf-8", errors="replace") for label in row] for row in classes] if classes is not None
              else [[""] * shape[1]] * shape[0])
    return labels, (scores.astype(np.float32) if scores is not None else np.zeros(shape, np.float32))


def regress(servable: Servable, signature: str) -> NoReturn:
    """TF Serving's Regress, on exports that hold no regression signature: the error TF Serving answers for the
    signature asked for (INVALID_ARGUMENT); one that is a regression signature is not served (UNIMPLEMENTED)."""
    name, _ = _method_signature(servable, signature, tf.saved_model.REGRESS_METHOD_NAME, "regression")
    raise from_code("UNIMPLEMENTED", f"This server does not run regression signatures ({name})")


def status_response(model: Model, version: int | None) -> dict:
    """GetModelStatusResponse as JSON: every loaded version (newest first) or the one asked for."""
    if version is not None and version not in model.servables:
        raise not_found(f"Could not find version {version} of model {model.name}")
    versions = [version] if version is not None else sorted(model.servables, reverse=True)
    return {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in versions]}

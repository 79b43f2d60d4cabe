"""TF Serving's gRPC services on our loaded models, with the protos and stubs of `tensorflow-serving-api`.

PredictionService (Predict, Classify, GetModelMetadata) and ModelService.GetModelStatus share the servables,
version policy, input checks and error wording with the REST API (`serving.model_requests`); a ServingError's
canonical code becomes the gRPC status (INVALID_ARGUMENT, NOT_FOUND, ...), as TF Serving answers. Every call holds
one of the server's `RequestSlots` (RESOURCE_EXHAUSTED when none is free); unexpected failures answer INTERNAL
without their text, which goes to the log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from ecg_tfx.serving.errors import INTERNAL_MESSAGE, ServingError, invalid_argument
from ecg_tfx.serving.limits import DEFAULT_MAX_REQUEST_BYTES, RequestSlots
from ecg_tfx.serving.model_requests import (
    DEFAULT_SIGNATURE,
    classify,
    find_model,
    find_servable,
    regress,
    run_signature,
    status_response,
)
from ecg_tfx.serving.servables import Model, Servable


def _guarded(slots: RequestSlots, context: grpc.ServicerContext, call: Callable[[], Any]) -> Any:
    """Runs one call within the request cap, turning ServingErrors into their gRPC status."""
    if not slots.try_acquire():
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, slots.busy_message())
    try:
        return call()
    except ServingError as error:
        context.abort(grpc.StatusCode[error.code], error.message)
    except Exception:  # a bug must cost one request, never the server, and show no internals
        logging.exception("internal error serving a gRPC request")
        context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    finally:
        slots.release()


def _model_spec(request: Any) -> Any:
    """A request's ModelSpec; a request without one gets TF Serving's INVALID_ARGUMENT (an empty name is looked up,
    and not found, as there)."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    return request.model_spec


def _servable(models: Mapping[str, Model], request: Any) -> Servable:
    """The servable a request's ModelSpec names: `version`, `version_label` or the latest."""
    model_spec = _model_spec(request)
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label if model_spec.HasField("version_label") else None
    return find_servable(models, model_spec.name, version, label)


def _decoded_bytes(name: str, proto: Any) -> int:
    """How many bytes a request's TensorProto decodes to: its declared shape times its element size (an element
    of a string tensor is an 8-byte reference)."""
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in dims):  # numpy's int64 product of such a shape wraps around to any size
        raise invalid_argument(f"tensor parsing error: {name} has a negative dimension in shape {dims}")
    try:
        itemsize = tf.dtypes.as_dtype(proto.dtype).size or 8  # 0 for strings
    except TypeError:  # not a TF DataType
        raise invalid_argument(f"tensor parsing error: {name}") from None
    return math.prod(dims) * itemsize


def _tensors(inputs: Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    """A Predict request's TensorProtos as numpy arrays. A proto may declare more elements than it carries (its last
    value fills the rest, as in TF Serving), so a message of a few bytes could make the server allocate any size:
    inputs that would decode to more than `max_bytes` together (the bound on a request message) are refused before
    any is built."""
    sizes = {name: _decoded_bytes(name, proto) for name, proto in inputs.items()}
    if sum(sizes.values()) > max_bytes:
        shapes = ", ".join(f"{name} {[dim.size for dim in inputs[name].tensor_shape.dim]}" for name in sorted(sizes))
        raise invalid_argument(f"inputs of shapes {shapes} would take {sum(sizes.values())} bytes, over the "
                               f"{max_bytes} a request may carry (--max_request_bytes)")
    tensors = {}
    for name, proto in inputs.items():
        try:
            tensors[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError):
            raise invalid_argument(f"tensor parsing error: {name}") from None
    return tensors


def _fill_spec(model_spec: Any, name: str, servable: Servable, signature: str) -> None:
    model_spec.name = name
    model_spec.version.value = servable.version
    model_spec.signature_name = signature


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify and GetModelMetadata; Regress answers as TF Serving does for a model without a regression
    signature (`model_requests.regress`), MultiInference UNIMPLEMENTED. A Predict request's inputs may decode to
    at most `max_tensor_bytes` together (`_tensors`)."""

    def __init__(self, models: Mapping[str, Model], slots: RequestSlots,
                 max_tensor_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.models = dict(models)
        self.slots = slots
        self.max_tensor_bytes = max_tensor_bytes

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _guarded(self.slots, context, lambda: self._predict(request))

    def Classify(self, request: classification_pb2.ClassificationRequest,  # noqa: N802
                 context: grpc.ServicerContext) -> Any:
        return _guarded(self.slots, context, lambda: self._classify(request))

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,  # noqa: N802
                         context: grpc.ServicerContext) -> Any:
        return _guarded(self.slots, context, lambda: self._metadata(request))

    def Regress(self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _guarded(self.slots, context, lambda: regress(_servable(self.models, request),
                                                             request.model_spec.signature_name))

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = _servable(self.models, request)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature not in servable.signature_defs:
            raise invalid_argument(f'Serving signature name: "{signature}" not found in signature def')
        tensors = _tensors(request.inputs, self.max_tensor_bytes)
        outputs = run_signature(servable, signature, tensors)
        wanted = list(request.output_filter) or sorted(outputs)
        for name in wanted:
            if name not in outputs:
                raise invalid_argument(f"output tensor alias not found in signature: {name} Outputs expected to be "
                                       f"in the set {{{','.join(sorted(outputs))}}}.")
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, request.model_spec.name, servable, signature)
        for name in wanted:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    def _classify(self, request: classification_pb2.ClassificationRequest) -> Any:
        servable = _servable(self.models, request)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        kind = request.input.WhichOneof("kind")
        if kind is None:
            raise invalid_argument("Input is empty.")
        if kind == "example_list":
            examples = [e.SerializeToString() for e in request.input.example_list.examples]
        else:  # concatenated serialized protos parse as their merge: the context joins every example
            context = request.input.example_list_with_context.context.SerializeToString()
            examples = [context + e.SerializeToString() for e in request.input.example_list_with_context.examples]
        if not examples:
            raise invalid_argument("Input is empty.")
        labels, scores = classify(servable, signature, examples)
        response = classification_pb2.ClassificationResponse()
        _fill_spec(response.model_spec, request.model_spec.name, servable, signature)
        for row_labels, row_scores in zip(labels, scores.tolist()):
            response.result.classifications.add().classes.extend(
                classification_pb2.Class(label=label, score=score) for label, score in zip(row_labels, row_scores))
        return response

    def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest) -> Any:
        _model_spec(request)  # then the fields, then the servable: TF Serving's order
        fields = list(request.metadata_field)
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = _servable(self.models, request)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, request.model_spec.name, servable, "")
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in servable.signature_defs.items():
            signature_defs.signature_def[name].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_defs)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest answers UNIMPLEMENTED (versions are fixed at start)."""

    def __init__(self, models: Mapping[str, Model], slots: RequestSlots):
        self.models = dict(models)
        self.slots = slots

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,  # noqa: N802
                       context: grpc.ServicerContext) -> Any:
        return _guarded(self.slots, context, lambda: self._status(request))

    def _status(self, request: get_model_status_pb2.GetModelStatusRequest) -> Any:
        spec = _model_spec(request)
        model = find_model(self.models, spec.name)
        version = spec.version.value if spec.HasField("version") else None  # a label is ignored, as by TF Serving
        return json_format.ParseDict(status_response(model, version), get_model_status_pb2.GetModelStatusResponse())

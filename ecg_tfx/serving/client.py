"""Clients for a served ECG model: REST (standard library only) and, when tensorflow-serving-api is installed, gRPC.

    client = RestClient("http://127.0.0.1:8501", model="ecg", label="stable")
    client.status(); client.metadata()
    out = client.predict(ecg, sample_rate)            # ecg [batch, time, leads] mV, sample_rate [batch] Hz
    out["class_name"], out["probabilities"]
    client.classify(serialized_examples)              # [[(label, score), ...] per example]

Both talk to TF Serving and to `python -m ecg_tfx.serve` (REST on 8501, gRPC on 8500).
Failures raise ServingError with the HTTP status (REST) or gRPC code and the server's message.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ecg_tfx.serving.errors import ServingError

DEFAULT_REST_URL = "http://127.0.0.1:8501"
DEFAULT_GRPC_TARGET = "127.0.0.1:8500"


def _float32_json(values: Any) -> list:
    """float32 values as JSON numbers in their shortest round-trip form (smaller bodies than float64 reprs)."""
    return np.asarray(values, dtype=np.float32).astype(str).astype(np.float64).tolist()


def example_to_json(serialized: bytes) -> dict[str, list]:
    """A serialized tf.Example as the JSON feature map of TF Serving's :classify (bytes as {"b64": ...}).

    Decimals stay decimals in JSON (json writes 500.0, not 500), so float features are not mistaken for int64.
    """
    from tensorflow.core.example import example_pb2  # TF's protos: imported only when examples are used

    features = example_pb2.Example.FromString(serialized).features.feature
    converted = {}
    for name, feature in features.items():
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value if kind else []
        if kind == "bytes_list":
            converted[name] = [{"b64": base64.b64encode(v).decode()} for v in values]
        elif kind == "float_list":
            converted[name] = _float32_json(list(values))
        else:
            converted[name] = list(values)
    return converted


def _columns(outputs: Any) -> dict[str, np.ndarray]:
    """A columnar predict answer as numpy arrays by output name."""
    if not isinstance(outputs, dict):
        outputs = {"output": outputs}
    return {name: np.asarray(value) for name, value in outputs.items()}


class RestClient:
    """TF Serving's REST API for one model, optionally pinned to a version or a version label."""

    def __init__(self, url: str = DEFAULT_REST_URL, model: str = "ecg", version: int | None = None,
                 label: str | None = None, timeout: float = 60.0):
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.label = label
        self.timeout = timeout

    def _path(self, suffix: str = "") -> str:
        path = f"/v1/models/{urllib.parse.quote(self.model, safe='')}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.label is not None:
            path += f"/labels/{urllib.parse.quote(self.label, safe='')}"
        return path + suffix

    def call(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> dict:
        """One request; returns the JSON answer or raises ServingError with the server's `error` message."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                message = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                message = body.decode(errors="replace") or error.reason
            raise ServingError(error.code, message) from None

    def status(self) -> dict:
        """GetModelStatus: {'model_version_status': [{'version', 'state', 'status'}, ...]}."""
        return self.call("GET", self._path())

    def metadata(self) -> dict:
        """GetModelMetadata: {'model_spec': ..., 'metadata': {'signature_def': {'signature_def': {...}}}}."""
        return self.call("GET", self._path("/metadata"))

    def predict_inputs(self, inputs: Mapping[str, Any], signature: str = "serving_default") -> dict[str, np.ndarray]:
        """Columnar predict with already JSON-ready inputs; returns the outputs as numpy arrays."""
        answer = self.call("POST", self._path(":predict"), {"signature_name": signature, "inputs": dict(inputs)})
        return _columns(answer["outputs"])

    def predict(self, ecg: np.ndarray, sample_rate: float | Sequence[float] | np.ndarray,
                signature: str = "serving_default") -> dict[str, np.ndarray]:
        """ECG [batch, time, leads] in mV at `sample_rate` Hz (one value, or one per recording)."""
        ecg = np.asarray(ecg, dtype=np.float32)
        rates = np.broadcast_to(np.asarray(sample_rate, dtype=np.float32), ecg.shape[:1])
        return self.predict_inputs({"ecg": _float32_json(ecg), "sample_rate": _float32_json(rates)}, signature)

    def predict_examples(self, serialized_examples: Sequence[bytes],
                         signature: str = "serve_examples") -> dict[str, np.ndarray]:
        """Serialized tf.Examples (one window each), sent base64-encoded."""
        examples = [{"b64": base64.b64encode(e).decode()} for e in serialized_examples]
        return self.predict_inputs({"examples": examples}, signature)

    def classify(self, serialized_examples: Sequence[bytes],
                 signature: str = "classify") -> list[list[tuple[str, float]]]:
        """TF Serving's Classify: per example, (class name, score) for every class."""
        payload = {"signature_name": signature, "examples": [example_to_json(e) for e in serialized_examples]}
        answer = self.call("POST", self._path(":classify"), payload)
        return [[(label, score) for label, score in result] for result in answer["results"]]


class GrpcClient:
    """The same calls over TF Serving's gRPC API (port 8500), with the stubs of `tensorflow-serving-api`."""

    def __init__(self, target: str = DEFAULT_GRPC_TARGET, model: str = "ecg", version: int | None = None,
                 label: str | None = None, timeout: float = 60.0):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        self.model, self.version, self.label, self.timeout = model, version, label, timeout
        self.channel = grpc.insecure_channel(target)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _spec(self, model_spec: Any, signature: str = "") -> None:
        model_spec.name = self.model
        model_spec.signature_name = signature
        if self.version is not None:
            model_spec.version.value = self.version
        elif self.label is not None:
            model_spec.version_label = self.label

    def _call(self, method: Any, request: Any) -> Any:
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingError(error.code().name, error.details()) from None

    def status(self) -> dict:
        from tensorflow_serving.apis import get_model_status_pb2

        from ecg_tfx.core import compat

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self.models.GetModelStatus, request)
        return compat.message_to_dict(response)

    def metadata(self) -> dict:
        """The signature_def map, as the REST metadata answer holds it."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        from ecg_tfx.core import compat

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self._call(self.predictions.GetModelMetadata, request)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_defs)
        return {"model_spec": compat.message_to_dict(response.model_spec),
                "metadata": {"signature_def": compat.message_to_dict(signature_defs)}}

    def predict_inputs(self, inputs: Mapping[str, np.ndarray], signature: str = "serving_default") -> dict:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self.predictions.Predict, request)
        return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}

    def predict(self, ecg: np.ndarray, sample_rate: float | Sequence[float] | np.ndarray,
                signature: str = "serving_default") -> dict[str, np.ndarray]:
        ecg = np.asarray(ecg, dtype=np.float32)
        rates = np.broadcast_to(np.asarray(sample_rate, dtype=np.float32), ecg.shape[:1]).copy()
        return self.predict_inputs({"ecg": ecg, "sample_rate": rates}, signature)

    def predict_examples(self, serialized_examples: Sequence[bytes],
                         signature: str = "serve_examples") -> dict[str, np.ndarray]:
        return self.predict_inputs({"examples": np.array(list(serialized_examples), dtype=object)}, signature)

    def classify(self, serialized_examples: Sequence[bytes],
                 signature: str = "classify") -> list[list[tuple[str, float]]]:
        from tensorflow.core.example import example_pb2
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, signature)
        request.input.example_list.examples.extend(example_pb2.Example.FromString(e) for e in serialized_examples)
        response = self._call(self.predictions.Classify, request)
        return [[(c.label, c.score) for c in classes.classes] for classes in response.result.classifications]

    def close(self) -> None:
        self.channel.close()

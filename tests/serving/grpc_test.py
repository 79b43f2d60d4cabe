"""The gRPC server (TF Serving's PredictionService and ModelService) on the real tiny export, driven with the
official `tensorflow-serving-api` stubs and with our GrpcClient, beside the REST server on the same model."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from ecg_tfx.core import schema
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.serving import client
from ecg_tfx.serving.grpc.server import GrpcServer
from ecg_tfx.serving.limits import RequestSlots, ServerLimits
from ecg_tfx.serving.rest.http import Server
from ecg_tfx.serving.saved_model import SIGNATURES
from ecg_tfx.serving.servables import Model

MAX_REQUEST_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def servers(tiny_export):
    """REST and gRPC servers on one loaded model, sharing one request cap, as `ecg_tfx.serve` runs them."""
    model = Model.load("ecg", str(tiny_export["version"].parent), {"stable": 1})
    limits = ServerLimits(max_request_bytes=MAX_REQUEST_BYTES)
    slots = RequestSlots(limits.max_concurrent_requests)
    with Server({"ecg": model}, limits=limits, slots=slots) as rest, \
            GrpcServer({"ecg": model}, limits=limits, slots=slots) as grpc_server:
        yield rest, grpc_server


@pytest.fixture(scope="module")
def channel(servers):
    with grpc.insecure_channel(servers[1].target) as opened:
        yield opened


@pytest.fixture(scope="module")
def predictions(channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def rest(servers) -> client.RestClient:
    return client.RestClient(servers[0].url, "ecg")


def windows(spec: ModelSpec, count: int, seed: int = 0) -> list[bytes]:
    signal = np.random.default_rng(seed).normal(scale=0.3, size=(count, spec.window_samples, len(spec.leads)))
    return [schema.make_example(s.astype(np.float32), spec.leads, spec.sample_rate_hz, [1], [spec.labels[1]],
                                f"r{i}", "p", 0) for i, s in enumerate(signal)]


def predict_request(inputs: dict[str, np.ndarray], signature: str = "", name: str = "ecg", version: int | None = None,
                    label: str | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


ECG = np.random.default_rng(1).normal(scale=0.5, size=(2, 750, 12)).astype(np.float32)
RATES = np.array([250.0, 250.0], np.float32)


def test_model_status_and_metadata_with_the_official_stubs(channel, predictions):
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "ecg"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=60)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "ecg"
    request.model_spec.version_label = "stable"
    response = predictions.GetModelMetadata(request, timeout=60)
    assert (response.model_spec.name, response.model_spec.version.value) == ("ecg", 1)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    signatures = signature_defs.signature_def
    assert set(SIGNATURES) <= set(signatures)
    assert [d.size for d in signatures["serving_default"].inputs["ecg"].tensor_shape.dim] == [-1, -1, 12]
    assert signatures["classify"].method_name == tf.saved_model.CLASSIFY_METHOD_NAME


def test_predict_serving_default_equals_the_saved_model_and_rest(predictions, tiny_servable, rest):
    response = predictions.Predict(predict_request({"ecg": ECG, "sample_rate": RATES}), timeout=60)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("ecg", 1, "serving_default")
    outputs = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
    direct = tiny_servable.functions["serving_default"](ecg=tf.constant(ECG), sample_rate=tf.constant(RATES))
    assert set(outputs) == set(direct)
    for name, value in direct.items():
        np.testing.assert_array_equal(outputs[name], value.numpy())  # the same float32 tensors, no JSON between
    np.testing.assert_allclose(rest.predict(ECG, RATES)["probabilities"], outputs["probabilities"], atol=1e-6)
    filtered = predictions.Predict(predict_request({"ecg": ECG, "sample_rate": RATES}, label="stable"), timeout=60)
    assert filtered.model_spec.version.value == 1
    only = predict_request({"ecg": ECG, "sample_rate": RATES}, version=1)
    only.output_filter.append("class_name")
    assert list(predictions.Predict(only, timeout=60).outputs) == ["class_name"]


def test_predict_serve_examples_and_classify(predictions, tiny_servable, tiny_spec):
    examples = windows(tiny_spec, 3)
    response = predictions.Predict(predict_request({"examples": np.array(examples, dtype=object)},
                                                   signature="serve_examples"), timeout=60)
    direct = tiny_servable.functions["serve_examples"](examples=tf.constant(examples))["probabilities"].numpy()
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["probabilities"]), direct)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "ecg"
    request.model_spec.signature_name = "classify"
    request.input.example_list.examples.extend(example_pb2.Example.FromString(e) for e in examples)
    result = predictions.Classify(request, timeout=60).result.classifications
    assert [[c.label for c in r.classes] for r in result] == [list(tiny_spec.labels)] * 3
    np.testing.assert_allclose([[c.score for c in r.classes] for r in result], direct, atol=1e-6)


def test_classify_merges_the_context_into_every_example(predictions, tiny_servable, tiny_spec):
    """example_list_with_context: the shared features sent once, as TF Serving merges them."""
    full = [example_pb2.Example.FromString(e) for e in windows(tiny_spec, 2, seed=5)]
    context = example_pb2.Example()
    for key in (schema.SHAPE, schema.LEADS, schema.SAMPLE_RATE):
        context.features.feature[key].CopyFrom(full[0].features.feature[key])
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "ecg"
    request.model_spec.signature_name = "classify"
    request.input.example_list_with_context.context.CopyFrom(context)
    for example in full:
        partial = example_pb2.Example()
        partial.CopyFrom(example)
        for key in (schema.SHAPE, schema.LEADS, schema.SAMPLE_RATE):
            del partial.features.feature[key]
        request.input.example_list_with_context.examples.append(partial)
    result = predictions.Classify(request, timeout=60).result.classifications
    direct = tiny_servable.functions["classify"](inputs=tf.constant([e.SerializeToString() for e in full]))["scores"]
    np.testing.assert_allclose([[c.score for c in r.classes] for r in result], direct.numpy(), atol=1e-6)


def test_our_grpc_client_against_our_server(servers, tiny_servable, tiny_spec, rest):
    stub = client.GrpcClient(servers[1].target, "ecg", label="stable")
    try:
        assert stub.status()["model_version_status"][0]["state"] == "AVAILABLE"
        assert set(SIGNATURES) <= set(stub.metadata()["metadata"]["signature_def"]["signature_def"])
        served = stub.predict(ECG, 250)
        np.testing.assert_allclose(served["probabilities"], rest.predict(ECG, 250)["probabilities"], atol=1e-6)
        examples = windows(tiny_spec, 2, seed=3)
        expected = tiny_servable.functions["classify"](inputs=tf.constant(examples))["scores"].numpy()
        np.testing.assert_allclose([[s for _, s in r] for r in stub.classify(examples)], expected, atol=1e-6)
        np.testing.assert_allclose(stub.predict_examples(examples)["probabilities"], expected, atol=1e-6)
    finally:
        stub.close()


NAN_ECG = ECG.copy()
NAN_ECG[0, 3, 2] = np.nan
# name: (gRPC request kwargs for predict_request, REST predict call or None, gRPC code, part of the message)
BAD_PREDICTS = {
    "unknown_model": (dict(name="nope"), None, "NOT_FOUND", "Servable not found for request: Latest(nope)"),
    "unknown_version": (dict(version=9), None, "NOT_FOUND", "Servable not found for request: Specific(ecg, 9)"),
    "unknown_label": (dict(label="beta"), None, "INVALID_ARGUMENT", "Unrecognized servable version label: beta"),
    "unknown_signature": (dict(signature="nope"), None, "INVALID_ARGUMENT",
                          'Serving signature name: "nope" not found in signature def'),
    "empty_name": (dict(name=""), None, "NOT_FOUND", "Servable not found for request: Latest()"),
    "nan": (dict(inputs={"ecg": NAN_ECG, "sample_rate": RATES}), (NAN_ECG, RATES), "INVALID_ARGUMENT",
            "ecg must hold finite numbers only"),
    "rate_below_contract": (dict(inputs={"ecg": ECG, "sample_rate": np.float32([20, 20])}),
                            (ECG, np.float32([20, 20])), "INVALID_ARGUMENT", "sample_rate must lie in [50, 10000]"),
    "different_rates": (dict(inputs={"ecg": ECG, "sample_rate": np.float32([250, 500])}),
                        (ECG, np.float32([250, 500])), "INVALID_ARGUMENT", "must share one sample_rate"),
    "wrong_leads": (dict(inputs={"ecg": ECG[:, :, :11], "sample_rate": RATES}), (ECG[:, :, :11], RATES),
                    "INVALID_ARGUMENT", "must have shape [-1, -1, 12]"),
    "missing_input": (dict(inputs={"ecg": ECG}), None, "INVALID_ARGUMENT",
                      "input size does not match signature: 1!=2 len({ecg}) != len({ecg,sample_rate}). Sent extra: "
                      "{}. Missing but required: {sample_rate}."),
    "wrong_dtype": (dict(inputs={"ecg": ECG.astype(np.float64), "sample_rate": RATES}), None, "INVALID_ARGUMENT",
                    ""),
    "too_large": (dict(inputs={"ecg": np.zeros((1, MAX_REQUEST_BYTES // 48 + 1, 12), np.float32),
                               "sample_rate": RATES[:1]}), None, "RESOURCE_EXHAUSTED", ""),
}


@pytest.mark.parametrize("name", sorted(BAD_PREDICTS))
def test_bad_predict_gets_tf_servings_code_and_rests_message(predictions, rest, name):
    kwargs, rest_call, code, message = BAD_PREDICTS[name]
    kwargs = {"inputs": {"ecg": ECG, "sample_rate": RATES}} | kwargs
    with pytest.raises(grpc.RpcError) as raised:
        predictions.Predict(predict_request(**kwargs), timeout=60)
    assert raised.value.code() == grpc.StatusCode[code], raised.value.details()
    assert message in raised.value.details()
    if rest_call is not None:  # the same contract violation over REST: 400 with the very same message
        with pytest.raises(client.ServingError) as rest_error:
            rest.predict(*rest_call)
        assert rest_error.value.status == 400 and rest_error.value.message == raised.value.details()
    assert predictions.Predict(predict_request({"ecg": ECG, "sample_rate": RATES}), timeout=60).outputs


def declared(dtype: str, shape: list[int], **carried: list) -> tensor_pb2.TensorProto:
    """A TensorProto declaring `shape` but carrying only the values given (its last value fills the rest)."""
    return tensor_pb2.TensorProto(dtype=types_pb2.DataType.Value(dtype), **carried,
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": s} for s in shape]))


ONE_FLOAT = {"float_val": [0.0]}
OVERSIZED = {  # name: (signature, inputs, part of the message)
    "48_tib": ("", {"ecg": declared("DT_FLOAT", [1, 2**40, 12], **ONE_FLOAT)}, "ecg [1, 1099511627776, 12]"),
    "480_mb": ("", {"ecg": declared("DT_FLOAT", [1, 10**7, 12], **ONE_FLOAT)}, "ecg [1, 10000000, 12]"),
    "800_mb_of_strings": ("serve_examples", {"examples": declared("DT_STRING", [10**8], string_val=[b"x"])},
                          "examples [100000000]"),
    "each_input_small_enough": ("", {"ecg": declared("DT_FLOAT", [1, 15_000, 12], **ONE_FLOAT),  # 720 KB
                                     "sample_rate": declared("DT_FLOAT", [200_000], **ONE_FLOAT)},  # 800 KB
                                "ecg [1, 15000, 12], sample_rate [200000] would take 1520000 bytes"),
    "negative_dimension": ("", {"ecg": declared("DT_FLOAT", [-2, 2**62, 12], **ONE_FLOAT)},
                           "ecg has a negative dimension"),  # numpy's product wraps to a positive size
}


@pytest.mark.parametrize("name", sorted(OVERSIZED))
def test_tensors_declaring_more_than_they_carry_are_refused_before_they_are_built(predictions, name):
    """A TensorProto's last value fills the shape it declares (as in TF Serving), so a message of a few bytes could
    ask for any size: the server refuses inputs that would decode larger than a request may be, naming the limit."""
    signature, inputs, message = OVERSIZED[name]
    request = predict_request({}, signature=signature)
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    if signature == "" and "sample_rate" not in inputs:
        request.inputs["sample_rate"].CopyFrom(tf.make_tensor_proto(RATES[:1]))
    assert request.ByteSize() < 150
    with pytest.raises(grpc.RpcError) as raised:
        predictions.Predict(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert message in raised.value.details()
    if name != "negative_dimension":
        assert f"over the {MAX_REQUEST_BYTES} a request may carry (--max_request_bytes)" in raised.value.details()


def test_bad_classify_metadata_and_status_requests(channel, predictions):
    classify_on_predict = classification_pb2.ClassificationRequest()
    classify_on_predict.model_spec.name = "ecg"
    classify_on_predict.input.example_list.examples.add()
    empty = classification_pb2.ClassificationRequest()
    empty.model_spec.name = "ecg"
    empty.model_spec.signature_name = "classify"
    no_fields = get_model_metadata_pb2.GetModelMetadataRequest()
    no_fields.model_spec.name = "ecg"
    other_field = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def", "other"])
    other_field.model_spec.name = "ecg"
    status_of_nope = get_model_status_pb2.GetModelStatusRequest()
    status_of_nope.model_spec.name = "nope"
    status_of_version_9 = get_model_status_pb2.GetModelStatusRequest()
    status_of_version_9.model_spec.name = "ecg"
    status_of_version_9.model_spec.version.value = 9
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "ecg"
    regress.input.example_list.examples.add()
    regress_nope = regression_pb2.RegressionRequest()
    regress_nope.model_spec.name = "nope"
    no_fields_of_nope = get_model_metadata_pb2.GetModelMetadataRequest()  # the fields are checked first
    no_fields_of_nope.model_spec.name = "nope"
    status_of_empty_name = get_model_status_pb2.GetModelStatusRequest()
    status_of_empty_name.model_spec.name = ""
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    for method, request, code, message in (
            (predictions.Classify, classify_on_predict, "INVALID_ARGUMENT",
             "Expected classification signature method_name to be tensorflow/serving/classify. Was: "
             "tensorflow/serving/predict"),
            (predictions.Classify, empty, "INVALID_ARGUMENT", "Input is empty."),
            (predictions.GetModelMetadata, no_fields, "INVALID_ARGUMENT", "must specify at least one metadata_field"),
            (predictions.GetModelMetadata, other_field, "INVALID_ARGUMENT", "Metadata field other is not supported"),
            (models.GetModelStatus, status_of_nope, "NOT_FOUND", "Could not find any versions of model nope"),
            (models.GetModelStatus, status_of_version_9, "NOT_FOUND", "Could not find version 9 of model ecg"),
            (predictions.Regress, regress, "INVALID_ARGUMENT", "Expected regression signature method_name to be "
             "tensorflow/serving/regress. Was: tensorflow/serving/predict"),
            (predictions.Regress, regress_nope, "NOT_FOUND", "Servable not found for request: Latest(nope)"),
            (predictions.Predict, predict_pb2.PredictRequest(), "INVALID_ARGUMENT", "Missing ModelSpec"),
            (predictions.GetModelMetadata, no_fields_of_nope, "INVALID_ARGUMENT",
             "must specify at least one metadata_field"),
            (models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(), "INVALID_ARGUMENT",
             "Missing ModelSpec"),
            (models.GetModelStatus, status_of_empty_name, "NOT_FOUND", "Could not find any versions of model ")):
        with pytest.raises(grpc.RpcError) as raised:
            method(request, timeout=60)
        assert raised.value.code() == grpc.StatusCode[code], (message, raised.value.details())
        assert message in raised.value.details()

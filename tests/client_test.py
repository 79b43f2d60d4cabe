"""The REST and gRPC clients against a real `export_lib.export_run` SavedModel served by `ecg_tfx.serve`.

The run is built as in export_test (a ModelSpec and a registry CNN saved to a run folder) but left untrained and
small, so exporting takes seconds; training is not what these tests are about.
"""

from __future__ import annotations

import json
import pathlib
from concurrent import futures

import keras
import numpy as np
import pytest
import tensorflow as tf

from ecg_tfx.core import labels, schema
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.core.records import STANDARD12
from ecg_tfx.dsp.preprocessing import PreprocessConfig
from ecg_tfx.models import build_model
from ecg_tfx.serving import client
from ecg_tfx.serving import saved_model as export_lib
from ecg_tfx.serving.rest import api as rest_api

SPEC = ModelSpec(model="cnn", labels=labels.SYNTHETIC_CLASSES, multi_label=False, leads=STANDARD12,
                 sample_rate_hz=100, window_samples=500, stride_samples=500, input_samples=250,
                 eval_stride_samples=250, preprocessing=PreprocessConfig(sample_rate_hz=100))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """`<export_dir>/ecg/1`, written by the real exporter from an untrained run."""
    root = tmp_path_factory.mktemp("client")
    run_dir = root / "run"
    run_dir.mkdir()
    keras.utils.set_random_seed(0)
    build_model(SPEC.model, len(SPEC.leads), len(SPEC.labels), SPEC.multi_label, SPEC.sample_rate_hz).save(
        run_dir / export_lib.MODEL_FILE)
    SPEC.save(str(run_dir))
    return pathlib.Path(export_lib.export_run(str(run_dir), str(root / "export"), "ecg"))


@pytest.fixture(scope="module")
def servable(exported) -> rest_api.Servable:
    return rest_api.Servable.load(str(exported), 1)


@pytest.fixture(scope="module")
def server(exported):
    model = rest_api.Model.load("ecg", str(exported.parent), {"stable": 1})
    with rest_api.Server({"ecg": model}) as running:
        yield running


@pytest.fixture(scope="module")
def rest(server) -> client.RestClient:
    return client.RestClient(server.url, "ecg")


def windows(count: int, seed: int = 0) -> list[bytes]:
    signal = np.random.default_rng(seed).normal(scale=0.3, size=(count, SPEC.window_samples, len(SPEC.leads)))
    return [schema.make_example(s.astype(np.float32), SPEC.leads, SPEC.sample_rate_hz, [1], [SPEC.labels[1]],
                                f"r{i}", "p", 0) for i, s in enumerate(signal)]


def test_status_and_metadata_of_a_real_export(rest):
    assert rest.status()["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    signatures = rest.metadata()["metadata"]["signature_def"]["signature_def"]
    assert set(export_lib.SIGNATURES) <= set(signatures)
    ecg = signatures["serving_default"]["inputs"]["ecg"]
    assert [d["size"] for d in ecg["tensor_shape"]["dim"]] == ["-1", "-1", "12"]
    assert signatures["classify"]["method_name"] == export_lib.CLASSIFY_METHOD


def test_predict_equals_calling_the_saved_model(rest, servable):
    """A 3 s recording at 250 Hz: the REST answer is the SavedModel's own, class names included."""
    ecg = np.random.default_rng(1).normal(scale=0.5, size=(2, 750, 12)).astype(np.float32)
    served = rest.predict(ecg, 250)
    direct = servable.functions["serving_default"](ecg=tf.constant(ecg), sample_rate=tf.constant([250.0, 250.0]))
    np.testing.assert_allclose(served["probabilities"], direct["probabilities"].numpy(), atol=1e-6)
    assert served["class_name"].tolist() == [n.decode() for n in direct["class_name"].numpy()]
    assert served["class_id"].tolist() == direct["class_id"].numpy().tolist()
    labelled = client.RestClient(rest.url, "ecg", label="stable").predict(ecg, [250, 250])
    np.testing.assert_array_equal(labelled["probabilities"], served["probabilities"])


def test_examples_predict_and_classify_agree(rest, servable):
    examples = windows(3)
    served = rest.predict_examples(examples)
    direct = servable.functions["serve_examples"](examples=tf.constant(examples))["probabilities"].numpy()
    np.testing.assert_allclose(served["probabilities"], direct, atol=1e-6)
    results = rest.classify(examples)
    assert [[name for name, _ in result] for result in results] == [list(SPEC.labels)] * 3
    np.testing.assert_allclose([[score for _, score in result] for result in results], direct, atol=1e-6)


def test_example_to_json_keeps_every_feature_kind():
    feature_map = client.example_to_json(windows(1)[0])
    assert feature_map[schema.SHAPE] == [SPEC.window_samples, len(SPEC.leads)]
    assert json.dumps(feature_map[schema.SAMPLE_RATE]) == "[100.0]"  # a decimal, so TF Serving reads a float
    assert feature_map[schema.RECORD_ID] == [{"b64": "cjA="}]
    assert feature_map[schema.LEADS][0] == {"b64": "aQ=="}


def test_errors_raise_serving_error_with_status_and_message(rest):
    with pytest.raises(client.ServingError) as error:
        client.RestClient(rest.url, "nope").status()
    assert error.value.status == 404 and error.value.message == "Could not find any versions of model nope"
    ecg = np.zeros((1, 300, 12), np.float32)
    ecg[0, 5, 5] = np.inf
    with pytest.raises(client.ServingError, match="non-finite") as error:
        rest.predict(ecg, 100)
    assert error.value.status == 400
    with pytest.raises(client.ServingError, match="must share one sample_rate") as error:
        rest.predict(np.zeros((2, 300, 12)), [100, 200])  # the export's own in-graph check
    assert error.value.status == 400
    with pytest.raises(client.ServingError, match="Unrecognized servable version label: beta"):
        client.RestClient(rest.url, "ecg", label="beta").metadata()
    with pytest.raises(ValueError, match="not both"):
        client.RestClient(rest.url, version=1, label="stable")


def test_grpc_client_speaks_tf_servings_protos(servable):
    """GrpcClient against an in-process gRPC PredictionService answering from the real SavedModel."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tensorflow_serving.apis")
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

    class Predictions(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - gRPC's method name
            assert (request.model_spec.name, request.model_spec.version_label) == ("ecg", "stable")
            inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
            outputs = rest_api.run_signature(servable, request.model_spec.signature_name, inputs)
            response = predict_pb2.PredictResponse()
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

        def Classify(self, request, context):  # noqa: N802
            examples = [e.SerializeToString() for e in request.input.example_list.examples]
            response = classification_pb2.ClassificationResponse()
            for result in rest_api.classify(servable, request.model_spec.signature_name, examples)["results"]:
                response.result.classifications.add().classes.extend(
                    classification_pb2.Class(label=label, score=score) for label, score in result)
            return response

    grpc_server = grpc.server(futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Predictions(), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    stub = client.GrpcClient(f"127.0.0.1:{port}", "ecg", label="stable")
    try:
        ecg = np.random.default_rng(2).normal(size=(1, 500, 12)).astype(np.float32)
        served = stub.predict(ecg, 100)
        direct = servable.functions["serving_default"](ecg=tf.constant(ecg), sample_rate=tf.constant([100.0]))
        np.testing.assert_allclose(served["probabilities"], direct["probabilities"].numpy(), atol=1e-6)
        assert served["class_name"].tolist() == direct["class_name"].numpy().tolist()
        examples = windows(2, seed=3)
        scores = [[score for _, score in result] for result in stub.classify(examples)]
        expected = servable.functions["classify"](inputs=tf.constant(examples))["scores"].numpy()
        np.testing.assert_allclose(scores, expected, atol=1e-6)
    finally:
        stub.close()
        grpc_server.stop(None)

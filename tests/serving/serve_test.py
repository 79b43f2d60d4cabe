"""The local TF-Serving-compatible REST server, over real HTTP on 127.0.0.1 with real SavedModels.

The models are small tf.Modules with the export's three signatures (serving_default, serve_examples, classify),
whose answers numpy can recompute: probabilities = softmax(mean over time of ecg @ weights * version).
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import pathlib
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ecg_tfx.serving.client import GrpcClient
from ecg_tfx.serving.errors import ServingError
from ecg_tfx.serving.limits import ServerLimits
from ecg_tfx.serving.rest.http import METRICS_PATH, Server
from ecg_tfx.serving.rest.json_tensors import tensor_from_json
from ecg_tfx.serving.saved_model import set_method_name
from ecg_tfx.serving.servables import Model, parse_version_labels

LEADS = 12
LABELS = ("normal", "mi", "other")
WEIGHTS = np.random.default_rng(0).normal(size=(LEADS, len(LABELS))).astype(np.float32)
MAX_REQUEST_BYTES = 256 * 1024
REPO = pathlib.Path(__file__).resolve().parents[2]


class ToyModule(tf.Module):
    """The export's signatures on a linear model; `scale` tells versions apart."""

    def __init__(self, scale: float):
        super().__init__()
        self.weights = tf.constant(WEIGHTS * scale)
        self.class_names = tf.constant(LABELS)

    def _outputs(self, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = tf.nn.softmax(logits)
        class_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "class_id": class_id,
                "class_name": tf.gather(self.class_names, class_id),
                "confidence": tf.reduce_max(probabilities, axis=-1)}

    def _features(self, examples: tf.Tensor) -> tf.Tensor:
        return tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([LEADS], tf.float32)})["x"]

    @tf.function(input_signature=[tf.TensorSpec([None, None, LEADS], tf.float32, name="ecg"),
                                  tf.TensorSpec([None], tf.float32, name="sample_rate")])
    def serve_ecg(self, ecg: tf.Tensor, sample_rate: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.debugging.assert_positive(sample_rate, message="sample_rate must be positive")
        return self._outputs(tf.reduce_mean(ecg, axis=1) @ self.weights)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self._features(examples) @ self.weights)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = tf.nn.softmax(self._features(inputs) @ self.weights)
        return {"classes": tf.tile(self.class_names[tf.newaxis], [tf.shape(scores)[0], 1]), "scores": scores}


def save_toy_model(path: pathlib.Path, scale: float) -> None:
    module = ToyModule(scale)
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.serve_ecg.get_concrete_function(),
        "serve_examples": module.serve_examples.get_concrete_function(),
        "classify": module.classify.get_concrete_function()})
    set_method_name(str(path), "classify", tf.saved_model.CLASSIFY_METHOD_NAME)


def expected_probabilities(ecg: np.ndarray, version: int) -> np.ndarray:
    logits = ecg.astype(np.float64).mean(axis=1) @ (WEIGHTS.astype(np.float64) * version)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def toy_example(x: np.ndarray) -> bytes:
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=x))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString()


def ecg_batch(batch: int, seed: int = 1, time: int = 50) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, time, LEADS)).astype(np.float32)


@pytest.fixture(scope="session")
def toy_base(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Versions 1 and 2, plus a half-written hidden folder that must be ignored as TF Serving ignores it."""
    base = tmp_path_factory.mktemp("toy") / "ecg"
    for version in (1, 2):
        save_toy_model(base / str(version), version)
    (base / ".tmp-3").mkdir()
    return base


@pytest.fixture(scope="module")
def server(toy_base):
    model = Model.load("ecg", str(toy_base), {"stable": 1, "canary": 2})
    with Server({"ecg": model}, limits=ServerLimits(max_request_bytes=MAX_REQUEST_BYTES)) as running:
        yield running


def call(server: Server, method: str, path: str, body: bytes | str | dict | None = None) -> tuple[int, dict]:
    """One raw HTTP request; returns the status and the parsed JSON body (every answer must be JSON)."""
    if isinstance(body, dict):
        body = json.dumps(body)
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        payload = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), payload[:200]
        return response.status, json.loads(payload)
    finally:
        connection.close()


def columnar(ecg: np.ndarray, rate: float = 500.0) -> dict:
    return {"inputs": {"ecg": ecg.tolist(), "sample_rate": [rate] * len(ecg)}}


def assert_still_serving(server: Server) -> None:
    ecg = ecg_batch(1, seed=9)
    status, body = call(server, "POST", "/v1/models/ecg:predict", columnar(ecg))
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"]["probabilities"], expected_probabilities(ecg, 2), atol=1e-5)


def test_status_lists_every_loaded_version_newest_first(server):
    status, body = call(server, "GET", "/v1/models/ecg")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} for v in ("2", "1")]}
    status, body = call(server, "GET", "/v1/models/ecg/versions/1")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]
    assert call(server, "GET", "/V1/MODELS/ecg")[0] == 200  # TF Serving matches paths case-insensitively


def test_metadata_has_tf_servings_signature_def_shape(server):
    status, body = call(server, "GET", "/v1/models/ecg/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "ecg", "signature_name": "", "version": "2"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    ecg = default["inputs"]["ecg"]
    assert ecg["dtype"] == "DT_FLOAT" and ecg["tensor_shape"]["unknown_rank"] is False
    assert [d["size"] for d in ecg["tensor_shape"]["dim"]] == ["-1", "-1", "12"]
    assert default["outputs"]["class_id"]["dtype"] == "DT_INT64"
    assert default["outputs"]["class_name"]["dtype"] == "DT_STRING"
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
    assert signatures["serve_examples"]["inputs"]["examples"]["dtype"] == "DT_STRING"
    assert call(server, "GET", "/v1/models/ecg/labels/stable/metadata")[1]["model_spec"]["version"] == "1"
    assert call(server, "GET", "/v1/models/ecg/versions/1/metadata")[1]["model_spec"]["version"] == "1"


def test_predict_row_format_answers_predictions_per_instance(server):
    ecg = ecg_batch(3)
    request = {"instances": [{"ecg": row.tolist(), "sample_rate": 500.0} for row in ecg]}
    status, body = call(server, "POST", "/v1/models/ecg:predict", request)
    assert status == 200, body
    expected = expected_probabilities(ecg, 2)
    assert len(body["predictions"]) == 3
    for prediction, probabilities in zip(body["predictions"], expected):
        assert set(prediction) == {"probabilities", "class_id", "class_name", "confidence"}
        np.testing.assert_allclose(prediction["probabilities"], probabilities, atol=1e-5)
        assert prediction["class_id"] == probabilities.argmax()
        assert prediction["class_name"] == LABELS[probabilities.argmax()]
        assert prediction["confidence"] == pytest.approx(probabilities.max(), abs=1e-5)


def test_predict_columnar_format_answers_outputs(server):
    ecg = ecg_batch(2, seed=3)
    status, body = call(server, "POST", "/v1/models/ecg:predict", {"signature_name": "serving_default",
                                                                    **columnar(ecg)})
    assert status == 200, body
    outputs = body["outputs"]
    expected = expected_probabilities(ecg, 2)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    assert outputs["class_id"] == expected.argmax(-1).tolist()
    assert outputs["class_name"] == [LABELS[i] for i in expected.argmax(-1)]


def test_float32_outputs_are_written_in_their_shortest_form(server):
    """TF Serving writes a float32 0.2 as 0.2, not as the float64 0.20000000298023224."""
    ecg = np.zeros((1, 4, LEADS), np.float32)
    text = json.dumps(call(server, "POST", "/v1/models/ecg:predict", columnar(ecg))[1])
    third = np.float32(1 / 3)
    assert str(third) in text and repr(float(third)) not in text


def test_version_and_label_urls_pick_their_version(server):
    ecg = ecg_batch(2, seed=4)
    for path, version in (("/v1/models/ecg/versions/1:predict", 1), ("/v1/models/ecg/versions/2:predict", 2),
                          ("/v1/models/ecg/labels/stable:predict", 1), ("/v1/models/ecg/labels/canary:predict", 2)):
        status, body = call(server, "POST", path, columnar(ecg))
        assert status == 200, (path, body)
        np.testing.assert_allclose(body["outputs"]["probabilities"], expected_probabilities(ecg, version), atol=1e-5)
    assert not np.allclose(expected_probabilities(ecg, 1), expected_probabilities(ecg, 2), atol=1e-3)


def test_examples_signature_takes_base64_strings(server):
    x = np.random.default_rng(5).normal(size=(2, LEADS)).astype(np.float32)
    instances = [{"b64": base64.b64encode(toy_example(row)).decode()} for row in x]
    status, body = call(server, "POST", "/v1/models/ecg:predict",
                        {"signature_name": "serve_examples", "instances": instances})
    assert status == 200, body
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]],
                               expected_probabilities(x[:, None], 2), atol=1e-5)


def test_classify_builds_examples_from_json_features(server):
    x = np.random.default_rng(6).normal(size=(2, LEADS)).astype(np.float32)
    request = {"signature_name": "classify", "examples": [{"x": row.tolist()} for row in x]}
    status, body = call(server, "POST", "/v1/models/ecg/labels/stable:classify", request)
    assert status == 200, body
    expected = expected_probabilities(x[:, None], 1)
    assert [[label for label, _ in result] for result in body["results"]] == [list(LABELS)] * 2
    np.testing.assert_allclose([[score for _, score in result] for result in body["results"]], expected, atol=1e-5)


ECG = ecg_batch(1, seed=7)
NAN_ECG = ECG.copy()
NAN_ECG[0, 3, 2] = np.nan
BAD_REQUESTS = {
    # name: (method, path, body, status, part of the error message)
    "malformed_json": ("POST", "/v1/models/ecg:predict", '{"inputs": [1, 2', 400, "JSON Parse error"),
    "empty_body": ("POST", "/v1/models/ecg:predict", "", 400, "The document is empty"),
    "not_an_object": ("POST", "/v1/models/ecg:predict", "[1, 2]", 400, "Is not object"),
    "missing_keys": ("POST", "/v1/models/ecg:predict", {"signature_name": "serving_default"}, 400,
                     "Missing 'inputs' or 'instances' key"),
    "both_keys": ("POST", "/v1/models/ecg:predict", {"inputs": [], "instances": []}, 400, "expecting only one of"),
    "missing_input": ("POST", "/v1/models/ecg:predict", {"inputs": {"ecg": ECG.tolist()}}, 400,
                      "Missing named input: sample_rate in 'inputs' object."),
    "plain_list_for_two_inputs": ("POST", "/v1/models/ecg:predict", {"instances": [1.0]}, 400,
                                  "expecting list of objects"),
    "wrong_keys": ("POST", "/v1/models/ecg:predict", {"instances": [{"ecg": ECG[0].tolist()}]}, 400,
                   "must only have keys: ecg,sample_rate"),
    "wrong_dtype": ("POST", "/v1/models/ecg:predict", {"inputs": {"ecg": [[["a"] * LEADS]], "sample_rate": [1.0]}},
                    400, 'JSON Value: "a" Type: String is not of expected type: float'),
    "bool_for_float": ("POST", "/v1/models/ecg:predict", {"inputs": {"ecg": ECG.tolist(), "sample_rate": [True]}},
                       400, "Type: True is not of expected type: float"),
    "ragged": ("POST", "/v1/models/ecg:predict", {"inputs": {"ecg": [[[0.0] * LEADS, [0.0] * 11]],
                                                              "sample_rate": [1.0]}},
               400, "Encountered list at unexpected size: 11 at level: 2 expected size: 12"),
    "wrong_shape": ("POST", "/v1/models/ecg:predict", columnar(ECG[:, :, :11]), 400,
                    "must have shape [-1, -1, 12] (-1: any size), got [1, 50, 11]"),
    "nan": ("POST", "/v1/models/ecg:predict", json.dumps(columnar(NAN_ECG)), 400,
            "ecg must hold finite numbers only (no NaN or Infinity)"),
    "model_assertion": ("POST", "/v1/models/ecg:predict", columnar(ECG, rate=-1.0), 400,
                        "sample_rate must be positive"),
    "unparsable_example": ("POST", "/v1/models/ecg:predict", {"signature_name": "serve_examples",
                                                              "instances": ["abc"]},
                           400, "Could not parse example input, value: 'abc'"),
    "lossy_float": ("POST", "/v1/models/ecg:predict", columnar(ECG, rate=16777217), 400, "without loss of precision"),
    "integer_too_long": ("POST", "/v1/models/ecg:predict", '{"instances": [' + "1" * 5000 + "]}", 400,
                         "Number too big to be stored in double"),
    "lone_surrogate_string": ("POST", "/v1/models/ecg:predict", {"signature_name": "serve_examples",
                                                                 "instances": ["\ud800"]},
                              400, "Invalid encoding in string: a lone UTF-16 surrogate"),
    "lone_surrogate_feature_value": ("POST", "/v1/models/ecg:classify",
                                     {"signature_name": "classify", "examples": [{"x": ["a\udfff"]}]}, 400,
                                     "Invalid encoding in string: a lone UTF-16 surrogate"),
    "lone_surrogate_feature_name": ("POST", "/v1/models/ecg:classify",
                                    {"signature_name": "classify", "examples": [{"x\ud800": [1.0]}]}, 400,
                                    "Invalid encoding in string: a lone UTF-16 surrogate"),
    "bad_base64": ("POST", "/v1/models/ecg:predict", {"signature_name": "serve_examples",
                                                      "instances": [{"b64": "not base64!"}]},
                   400, "Unable to base64 decode"),
    "unknown_model": ("POST", "/v1/models/nope:predict", columnar(ECG), 404,
                      "Servable not found for request: Latest(nope)"),
    "unknown_version": ("POST", "/v1/models/ecg/versions/9:predict", columnar(ECG), 404,
                        "Servable not found for request: Specific(ecg, 9)"),
    "unknown_label": ("POST", "/v1/models/ecg/labels/beta:predict", columnar(ECG), 400,
                      "Unrecognized servable version label: beta"),
    "unknown_signature": ("POST", "/v1/models/ecg:predict", {"signature_name": "nope", **columnar(ECG)}, 400,
                          'Serving signature name: "nope" not found in signature def'),
    "signature_not_a_string": ("POST", "/v1/models/ecg:predict", {"signature_name": 3, **columnar(ECG)}, 400,
                               "'signature_name' key must be a string value."),
    "classify_on_predict_signature": ("POST", "/v1/models/ecg:classify", {"examples": [{"x": [1.0] * LEADS}]}, 400,
                                      "Expected classification signature method_name to be "
                                      "tensorflow/serving/classify. Was: tensorflow/serving/predict"),
    "classify_without_examples": ("POST", "/v1/models/ecg:classify", {"signature_name": "classify"}, 400,
                                  "key 'examples' is expected and was not found"),
    "classify_mixed_feature": ("POST", "/v1/models/ecg:classify",
                               {"signature_name": "classify", "examples": [{"x": [1.0, "a"]}]}, 400,
                               "Unexpected element type in feature: x expecting type: float"),
    "classify_bad_example": ("POST", "/v1/models/ecg:classify",
                             {"signature_name": "classify", "examples": [{"y": [1.0]}]}, 400,
                             "Feature: x (data type: float) is required but could not be found."),
    "status_unknown_model": ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    "status_unknown_version": ("GET", "/v1/models/ecg/versions/9", None, 404, "Could not find version 9 of model ecg"),
    "metadata_unknown_label": ("GET", "/v1/models/ecg/labels/beta/metadata", None, 400,
                               "Unrecognized servable version label: beta"),
    "missing_model_name": ("GET", "/v1/models", None, 400, "Missing model name in request."),
    "get_on_predict": ("GET", "/v1/models/ecg:predict", None, 400, "Malformed request: GET /v1/models/ecg:predict"),
    "delete": ("DELETE", "/v1/models/ecg", None, 400, "Malformed request: DELETE /v1/models/ecg"),
    "non_numeric_version": ("GET", "/v1/models/ecg/versions/one", None, 400, "Malformed request"),
    "regress": ("POST", "/v1/models/ecg:regress", {"examples": [{}]}, 400,
                "Expected regression signature method_name to be tensorflow/serving/regress. Was: "
                "tensorflow/serving/predict"),
    "regress_unknown_signature": ("POST", "/v1/models/ecg:regress", {"signature_name": "nope", "examples": [{}]},
                                  400, "No signature was found with the name: nope"),
    "outside_v1": ("GET", "/healthz", None, 404, "Not found: /healthz"),
    "too_large": ("POST", "/v1/models/ecg:predict", " " * (MAX_REQUEST_BYTES + 1), 413, "--max_request_bytes"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_gets_a_json_error_and_the_server_keeps_serving(server, name):
    method, path, body, expected_status, message = BAD_REQUESTS[name]
    status, answer = call(server, method, path, body)
    assert status == expected_status, answer
    assert list(answer) == ["error"] and message in answer["error"], answer
    assert_still_serving(server)


def test_parallel_clients_each_get_their_own_answer(server):
    batches = [ecg_batch(2, seed=100 + i, time=200) for i in range(24)]

    def ask(ecg: np.ndarray) -> tuple[int, dict]:
        return call(server, "POST", "/v1/models/ecg:predict", columnar(ecg))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, batches))
    for ecg, (status, body) in zip(batches, answers):
        assert status == 200, body
        np.testing.assert_allclose(body["outputs"]["probabilities"], expected_probabilities(ecg, 2), atol=1e-5)


def test_labels_must_point_at_loaded_versions(toy_base):
    with pytest.raises(ValueError, match="'beta' points at version 7, which is not loaded"):
        Model.load("ecg", str(toy_base), {"beta": 7})
    assert parse_version_labels("stable:1, canary:2") == {"stable": 1, "canary": 2}
    with pytest.raises(ValueError, match="expected label:version"):
        parse_version_labels("stable=1")


def test_cli_serves_in_a_subprocess_until_terminated(toy_base, tmp_path):
    """Also reads TF Serving's --batching_parameters_file: the metrics page's batch-size buckets end at its size."""
    config = tmp_path / "batching.config"
    config.write_text("# three rows at most\nmax_batch_size { value: 3 }\nbatch_timeout_micros { value: 0 }\n")
    process = subprocess.Popen([sys.executable, "-m", "ecg_tfx.serve", f"--model_base_path={toy_base}", "--port=0",
                                "--grpc_port=0", "--version_labels=stable:1", f"--batching_parameters_file={config}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = process.stdout.readline()
        assert "serving model ecg versions [1, 2] labels {'stable': 1} at http://127.0.0.1:" in line, \
            process.stderr.read() if process.poll() is not None else line
        host_port = line.split("http://")[1].split("/")[0]
        grpc_client = GrpcClient(line.split(" and gRPC ")[1].strip(), "ecg")
        try:
            assert grpc_client.status()["model_version_status"][0]["version"] == "2"
        finally:
            grpc_client.close()
        connection = http.client.HTTPConnection(host_port, timeout=60)
        connection.request("POST", "/v1/models/ecg/labels/stable:predict", json.dumps(columnar(ECG)))
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        np.testing.assert_allclose(body["outputs"]["probabilities"], expected_probabilities(ECG, 1), atol=1e-5)
        connection.request("GET", METRICS_PATH)
        buckets = re.findall(r'processed_batch_size_bucket\{le="(\d+)"\}', connection.getresponse().read().decode())
        assert buckets == ["1", "2", "3"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()


def test_cli_refuses_a_batching_file_beside_the_flags_it_replaces(toy_base, tmp_path):
    config = tmp_path / "batching.config"
    config.write_text("max_batch_size { value: 3 }\n")
    both = subprocess.run([sys.executable, "-m", "ecg_tfx.serve", f"--model_base_path={toy_base}", "--port=0",
                           "--grpc_port=-1", f"--batching_parameters_file={config}", "--max_batch_size=4"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert both.returncode != 0 and "pass either --batching_parameters_file or --max_batch_size" in both.stderr


def test_json_tensors_of_plain_numbers_equal_the_exact_per_value_path():
    from tensorflow.core.framework import types_pb2

    rng = np.random.default_rng(0)
    value = rng.normal(size=(2, 500, 12)).tolist()
    value[0][0][0] = 3  # ints mixed with floats, as JSON encoders write them
    fast = tensor_from_json(value, types_pb2.DT_FLOAT)
    assert fast.dtype == np.float32 and fast.shape == (2, 500, 12)
    np.testing.assert_array_equal(fast, np.array(value, np.float32))
    for bad in ([[True, 1.0]], [["1.5", 2.0]], [[1.0], [1.0, 2.0]], [[2 ** 25 + 1, 1.0]]):
        with pytest.raises(ServingError):
            tensor_from_json(bad, types_pb2.DT_FLOAT)

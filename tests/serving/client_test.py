"""The REST client against the tiny export (conftest's `tiny_export`, written by `serving.exporter.export_run`)
served by `ecg_tfx.serve`."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from ecg_tfx.core import schema
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.serving import client
from ecg_tfx.serving.rest.http import Server
from ecg_tfx.serving.saved_model import SIGNATURES
from ecg_tfx.serving.servables import Model


@pytest.fixture(scope="module")
def exported(tiny_export) -> pathlib.Path:
    """`<export_dir>/ecg/1`, written by the real exporter."""
    return tiny_export["version"]


@pytest.fixture(scope="module")
def server(exported):
    model = Model.load("ecg", str(exported.parent), {"stable": 1})
    with Server({"ecg": model}) as running:
        yield running


@pytest.fixture(scope="module")
def rest(server) -> client.RestClient:
    return client.RestClient(server.url, "ecg")


def windows(spec: ModelSpec, count: int, seed: int = 0) -> list[bytes]:
    signal = np.random.default_rng(seed).normal(scale=0.3, size=(count, spec.window_samples, len(spec.leads)))
    return [schema.make_example(s.astype(np.float32), spec.leads, spec.sample_rate_hz, [1], [spec.labels[1]],
                                f"r{i}", "p", 0) for i, s in enumerate(signal)]


def test_status_and_metadata_of_a_real_export(rest):
    assert rest.status()["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    signatures = rest.metadata()["metadata"]["signature_def"]["signature_def"]
    assert set(SIGNATURES) <= set(signatures)
    ecg = signatures["serving_default"]["inputs"]["ecg"]
    assert [d["size"] for d in ecg["tensor_shape"]["dim"]] == ["-1", "-1", "12"]
    assert signatures["classify"]["method_name"] == tf.saved_model.CLASSIFY_METHOD_NAME


def test_predict_equals_calling_the_saved_model(rest, tiny_servable):
    """A 3 s recording at 250 Hz: the REST answer is the SavedModel's own, class names included."""
    ecg = np.random.default_rng(1).normal(scale=0.5, size=(2, 750, 12)).astype(np.float32)
    served = rest.predict(ecg, 250)
    direct = tiny_servable.functions["serving_default"](ecg=tf.constant(ecg), sample_rate=tf.constant([250.0, 250.0]))
    np.testing.assert_allclose(served["probabilities"], direct["probabilities"].numpy(), atol=1e-6)
    assert served["class_name"].tolist() == [n.decode() for n in direct["class_name"].numpy()]
    assert served["class_id"].tolist() == direct["class_id"].numpy().tolist()
    labelled = client.RestClient(rest.url, "ecg", label="stable").predict(ecg, [250, 250])
    np.testing.assert_array_equal(labelled["probabilities"], served["probabilities"])


def test_examples_predict_and_classify_agree(rest, tiny_servable, tiny_spec):
    examples = windows(tiny_spec, 3)
    served = rest.predict_examples(examples)
    direct = tiny_servable.functions["serve_examples"](examples=tf.constant(examples))["probabilities"].numpy()
    np.testing.assert_allclose(served["probabilities"], direct, atol=1e-6)
    results = rest.classify(examples)
    assert [[name for name, _ in result] for result in results] == [list(tiny_spec.labels)] * 3
    np.testing.assert_allclose([[score for _, score in result] for result in results], direct, atol=1e-6)


def test_example_to_json_keeps_every_feature_kind(tiny_spec):
    feature_map = client.example_to_json(windows(tiny_spec, 1)[0])
    assert feature_map[schema.SHAPE] == [tiny_spec.window_samples, len(tiny_spec.leads)]
    assert json.dumps(feature_map[schema.SAMPLE_RATE]) == "[500.0]"  # a decimal, so TF Serving reads a float
    assert feature_map[schema.RECORD_ID] == [{"b64": "cjA="}]
    assert feature_map[schema.LEADS][0] == {"b64": "aQ=="}


def test_errors_raise_serving_error_with_status_and_message(rest):
    with pytest.raises(client.ServingError) as error:
        client.RestClient(rest.url, "nope").status()
    assert error.value.status == 404 and error.value.message == "Could not find any versions of model nope"
    ecg = np.zeros((1, 300, 12), np.float32)
    ecg[0, 5, 5] = np.inf
    with pytest.raises(client.ServingError, match=r"ecg must hold finite numbers only \(no NaN or Infinity\)") as error:
        rest.predict(ecg, 100)
    assert error.value.status == 400
    with pytest.raises(client.ServingError, match="must share one sample_rate") as error:
        rest.predict(np.zeros((2, 300, 12)), [100, 200])  # the export's own in-graph check
    assert error.value.status == 400
    with pytest.raises(client.ServingError, match="Unrecognized servable version label: beta"):
        client.RestClient(rest.url, "ecg", label="beta").metadata()
    with pytest.raises(ValueError, match="not both"):
        client.RestClient(rest.url, version=1, label="stable")

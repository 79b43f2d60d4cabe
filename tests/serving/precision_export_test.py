"""Export of runs trained under a mixed precision policy: float32 TFLite always, the SavedModel in its compute
dtype."""

from __future__ import annotations

import csv
import functools
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import built_once
from tensorflow.core.protobuf import saved_model_pb2

from ecg_tfx.core import schema
from ecg_tfx.core.model_spec import ModelSpec, window_probabilities
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.data import input_pipeline
from ecg_tfx.dsp.preprocessing import preprocess
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.models import build_model
from ecg_tfx.models.ensemble import load_run
from ecg_tfx.serving.decide import calibrate
from ecg_tfx.serving.exporter import REPORT_FILE, export_run
from ecg_tfx.serving.precision import with_compute_dtype
from ecg_tfx.serving.tflite import TFLiteRunner, read_windows

# The mixed policies: a float32 run's export is tiny_export's, whose TFLite and SavedModel agreement with the Keras
# model export_test and tflite_test check.
MIXED = ("mixed_float16", "mixed_bfloat16")
UNCALIBRATED = ("float32", "float16", "dynamic_range")
REDUCED = {"bfloat16": tf.bfloat16.as_datatype_enum, "float16": tf.float16.as_datatype_enum}
TOLERANCE = {"mixed_float16": 5e-3, "mixed_bfloat16": 3e-2}  # |dp| of a 1-epoch tiny CNN


@pytest.fixture(scope="module")
def policy_run(tiny_conversion, tmp_path_factory):
    """policy -> a run folder (model.keras, model_spec.json, history.csv) with the tiny CNN fitted one step under that
    mixed policy (set globally, reset afterwards), trained once per test run."""
    data_dir, manifest = tiny_conversion

    def fit(policy: str, run_dir: pathlib.Path) -> None:
        spec = manifest.model_spec("cnn", input_seconds=2.5, eval_stride_seconds=2.5)
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            model = build_model("cnn", len(spec.leads), len(spec.labels), False, spec.sample_rate_hz)
            model.compile(optimizer="adam", loss="categorical_crossentropy")
            # One step of 2 windows: enough to save a trained mixed model (float16 has no fast CPU kernels).
            model.fit(input_pipeline.make_dataset(str(data_dir), manifest, "train", spec, 2, training=False),
                      epochs=1, steps_per_epoch=1, verbose=0,
                      callbacks=[keras.callbacks.CSVLogger(str(run_dir / "history.csv"))])
            model.save(RunFolder(str(run_dir)).model)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        spec.save(str(run_dir))

    @functools.cache
    def run(policy: str) -> pathlib.Path:
        return built_once(tmp_path_factory, f"run_{policy}", lambda folder: fit(policy, folder))

    return run


def graph_dtypes(version: pathlib.Path) -> set[int]:
    """Every dtype enum named by a node attribute of the SavedModel's graph and its functions."""
    saved_model = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
    return {t for node in nodes for attr in node.attr.values() for t in [attr.type, *attr.list.type]}


@pytest.mark.parametrize("policy", MIXED)
def test_a_mixed_run_trains_and_exports_float32_tflite_and_a_float32_saved_model(policy, policy_run,
                                                                                  tiny_conversion, tmp_path):
    data_dir, _ = tiny_conversion
    run_dir = policy_run(policy)
    trained, spec = load_run(str(run_dir))
    # Trained under the policy: reduced compute, float32 weights and probabilities, a finite loss.
    assert trained.layers[1].compute_dtype == policy.replace("mixed_", "")
    assert all(v.dtype == "float32" for v in trained.trainable_variables) and trained.output.dtype == "float32"
    with open(run_dir / "history.csv") as f:
        assert np.isfinite([float(row["loss"]) for row in csv.DictReader(f)]).all()
    # The variants without calibration: the calibrated ones convert the same float32 window model (tested on
    # tiny_export); 4 test windows in the tiny data.
    version = pathlib.Path(export_run(str(run_dir), str(tmp_path), tflite=True, data_dir=str(data_dir),
                                      min_agreement_windows=1, tflite_variants=UNCALIBRATED))
    report = json.loads((version / REPORT_FILE).read_text())
    assert sorted(report["tflite"]) == sorted(UNCALIBRATED)  # only the variants asked for
    assert report["saved_model"]["compute_dtype"] == "float32"
    assert not graph_dtypes(version) & set(REDUCED.values())
    windows, serialized = read_windows(str(data_dir), "test", spec, 8)
    saved = tf.saved_model.load(str(version)).signatures["serve_examples"]
    served = saved(examples=tf.constant(serialized))["probabilities"].numpy()
    for kind, entry in ((k, e) for k, e in report["tflite"].items() if "file" in e):
        runner = TFLiteRunner((version / entry["file"]).read_bytes())
        dtypes = {np.dtype(d["dtype"]).name for d in runner.interpreter.get_tensor_details()}
        computed = dtypes - {"float16"} if kind == "float16" else dtypes  # float16 weights, dequantized to float32
        assert not computed & set(REDUCED), (kind, dtypes)
    float32 = report["tflite"]["float32"]
    assert float32["usable"] and float32["argmax_agreement"] == 1.0 and float32["max_abs_prob_diff"] < 1e-4
    loaded = tf.saved_model.load(str(version))
    decision = Decision.from_json(json.loads(loaded.metadata()["decision_json"].numpy()))
    raw = np.concatenate([TFLiteRunner((version / float32["file"]).read_bytes())(w[None]) for w in windows])
    tflite = calibrate(raw, decision.calibration).numpy()  # the TFLite model outputs uncalibrated probabilities
    np.testing.assert_allclose(tflite, served, atol=1e-4)
    np.testing.assert_array_equal(tflite.argmax(-1), served.argmax(-1))
    # The float32 export computes what the trained (mixed) model computes, up to its rounding.
    signal = schema.parse_examples(tf.constant(serialized), spec.window_samples, len(spec.leads))["signal"]
    mixed = calibrate(window_probabilities(trained, preprocess(signal, spec.preprocessing), spec), decision.calibration)
    np.testing.assert_allclose(served, mixed.numpy(), atol=TOLERANCE[policy])


def test_bfloat16_compute_stays_within_bf16_rounding_of_float32(policy_run, tiny_conversion, tmp_path):
    data_dir, _ = tiny_conversion
    run_dir = policy_run("mixed_bfloat16")
    spec = ModelSpec.load(str(run_dir))
    _, serialized = read_windows(str(data_dir), "test", spec, 8)
    outputs = {}
    for compute_dtype in ("float32", "bfloat16"):
        version = pathlib.Path(export_run(str(run_dir), str(tmp_path / compute_dtype), compute_dtype=compute_dtype))
        assert (REDUCED["bfloat16"] in graph_dtypes(version)) == (compute_dtype == "bfloat16")
        saved = tf.saved_model.load(str(version)).signatures["serve_examples"]
        outputs[compute_dtype] = saved(examples=tf.constant(serialized))["probabilities"].numpy()
    np.testing.assert_allclose(outputs["bfloat16"], outputs["float32"], atol=TOLERANCE["mixed_bfloat16"])
    assert np.abs(outputs["bfloat16"] - outputs["float32"]).max() > 0  # it did compute in bf16


def test_float16_run_exports_bfloat16_compute_and_float32_runs_refuse_it(policy_run, tiny_run):
    fp16, _ = load_run(str(policy_run("mixed_float16")))
    bf16 = with_compute_dtype(fp16, "bfloat16")
    assert {layer.dtype_policy.name for layer in bf16.layers[1:]} == {"mixed_bfloat16", "float32"}
    assert bf16.layers[-1].compute_dtype == "float32"  # the probability output stays pinned
    with pytest.raises(ValueError, match="trained under float32"):
        with_compute_dtype(load_run(str(tiny_run))[0], "bfloat16")  # trained under float32

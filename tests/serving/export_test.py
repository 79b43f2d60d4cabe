"""Export tests: a tiny trained run exported once per session, then checked from every side that serves it."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_ops import tflite_op_names
from plain_tf import run_plain_tf
from tensorflow_serving.apis import prediction_log_pb2

from ecg_tfx.core import schema
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec, window_probabilities
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.data import conversion, input_pipeline, transform
from ecg_tfx.data.sources.ptb import PTBSource
from ecg_tfx.dsp.preprocessing import preprocess
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.serving.decide import calibrate
from ecg_tfx.serving.exporter import REPORT_FILE, export_run
from ecg_tfx.serving.saved_model import SIGNATURES, WARMUP_FILE, warmup_signal
from ecg_tfx.serving.tflite import TFLITE_DIR, TFLiteRunner, read_windows
from ecg_tfx.serving.versions import next_version

PYTHON = sys.executable


@pytest.fixture(scope="session")
def loaded(tiny_export):
    return tf.saved_model.load(str(tiny_export["version"]))


@pytest.fixture(scope="session")
def decision(loaded) -> Decision:
    """The decision the export serves (fitted on the tiny validation split at export: the run has none)."""
    return Decision.from_json(json.loads(loaded.metadata()["decision_json"].numpy()))


@pytest.fixture(scope="session")
def keras_model(tiny_export) -> keras.Model:
    return keras.saving.load_model(RunFolder(str(tiny_export["run"])).model, compile=False)


def _test_examples(tiny_export, spec: ModelSpec) -> np.ndarray:
    return read_windows(str(tiny_export["data"]), "test", spec, 100)[1]


def test_layout_assets_and_version_folder(tiny_export, tiny_spec):
    version = tiny_export["version"]
    assert version == tiny_export["export_dir"] / "ecg" / "1"
    assert (version / "assets" / "labels.txt").read_text().splitlines() == list(tiny_spec.labels)
    assert sorted(os.listdir(version.parent)) == ["1"]
    report = json.loads((version / REPORT_FILE).read_text())
    for entry in (e for e in report["tflite"].values() if "file" in e):
        assert entry["size_bytes"] == (version / entry["file"]).stat().st_size > 0
    assert ModelSpec.load(str(version / TFLITE_DIR)) == tiny_spec


def test_plain_tensorflow_loads_and_calls_every_signature(tiny_export, tiny_spec):
    """A separate interpreter where ecg_tfx cannot be imported: the export must need stock TF ops only."""
    shard = Manifest.load(str(tiny_export["data"])).shard_files(str(tiny_export["data"]), "test")[0]
    script = """
        import json, sys
        import numpy as np, tensorflow as tf
        model = tf.saved_model.load(sys.argv[1])
        examples = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(sys.argv[2]).take(3)])
        ecg = tf.constant(np.random.default_rng(0).normal(size=(2, 3000, 12)).astype("float32"))
        out = {
            "serving_default": model.signatures["serving_default"](ecg=ecg, sample_rate=tf.constant([250.0, 250.0])),
            "serve_examples": model.signatures["serve_examples"](examples=examples),
            "classify": model.signatures["classify"](inputs=examples),
            "metadata": model.metadata(),
        }
        print(json.dumps({sig: {k: [str(v.dtype.name), v.shape.as_list(),
                                    v.numpy().tolist() if v.dtype != tf.string else
                                    np.vectorize(bytes.decode)(v.numpy()).tolist()]
                                for k, v in outputs.items()} for sig, outputs in out.items()}))
    """
    result = run_plain_tf(script, str(tiny_export["version"]), shard, cwd=tiny_export["data"])
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    classes = len(tiny_spec.labels)
    for name, batch in (("serving_default", 2), ("serve_examples", 3)):
        assert out[name]["probabilities"][:2] == ["float32", [batch, classes]]
        assert out[name]["class_id"][:2] == ["int64", [batch]]
        assert out[name]["class_name"][:2] == ["string", [batch]]
        assert out[name]["confidence"][:2] == ["float32", [batch]]
        probabilities = np.array(out[name]["probabilities"][2])
        np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-5)
        assert out[name]["class_name"][2] == [tiny_spec.labels[i] for i in probabilities.argmax(-1)]
        assert out[name]["present"][:3] == ["bool", [batch, classes], np.eye(classes, dtype=bool)[
            probabilities.argmax(-1)].tolist()]  # single-label: the argmax alone
        for key in ("present_names", "reason", "decision"):
            assert out[name][key][:2] == ["string", [batch]]
        assert out[name]["bad_leads"][:2] == ["bool", [batch, len(tiny_spec.leads)]]
        assert out[name]["heart_rate_bpm"][:2] == ["float32", [batch]]
        assert out[name]["signal_unreadable"][:2] == ["bool", [batch]]
        assert set(out[name]["reason"][2]) <= {"", "low_confidence", "poor_signal"}
        assert out[name]["decision"][2] == [
            names if not reason else "inconclusive"
            for names, reason in zip(out[name]["present_names"][2], out[name]["reason"][2])]
    # White noise is no ECG: the quality gate makes it inconclusive; the synthetic ECG windows pass it.
    assert out["serving_default"]["signal_unreadable"][2] == [True, True]
    assert out["serving_default"]["reason"][2] == ["poor_signal"] * 2
    assert out["serve_examples"]["signal_unreadable"][2] == [False] * 3
    assert all(30 < rate < 240 for rate in out["serve_examples"]["heart_rate_bpm"][2])
    assert out["classify"]["classes"][:2] == ["string", [3, classes]]
    assert out["classify"]["classes"][2][0] == list(tiny_spec.labels)
    np.testing.assert_allclose(out["classify"]["scores"][2], out["serve_examples"]["probabilities"][2], atol=1e-6)
    meta = out["metadata"]
    assert json.loads(meta["decision_json"][2])["fitted_on"]["split"] == "validation"
    assert meta["class_names"][2] == list(tiny_spec.labels) and meta["leads"][2] == list(tiny_spec.leads)
    assert (meta["sample_rate_hz"][2], meta["window_samples"][2]) == (500, 5000)
    assert ModelSpec.from_json(json.loads(meta["model_spec_json"][2])) == tiny_spec


def test_saved_model_cli_lists_the_three_signatures(tiny_export):
    cli = pathlib.Path(PYTHON).parent / "saved_model_cli"
    result = subprocess.run([str(cli), "show", "--all", "--dir", str(tiny_export["version"])], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    sections = {name: text.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
                for name in SIGNATURES}
    default = sections["serving_default"]
    assert "dtype: DT_FLOAT\n        shape: (-1, -1, 12)\n        name: serving_default_ecg:0" in default
    assert "dtype: DT_FLOAT\n        shape: (-1)\n        name: serving_default_sample_rate:0" in default
    for name in ("serving_default", "serve_examples"):
        for key, dtype, shape in (("probabilities", "DT_FLOAT", "(-1, 5)"), ("class_id", "DT_INT64", "(-1)"),
                                  ("class_name", "DT_STRING", "(-1)"), ("confidence", "DT_FLOAT", "(-1)")):
            assert f"outputs['{key}'] tensor_info:\n        dtype: {dtype}\n        shape: {shape}" in sections[name]
        assert "Method name is: tensorflow/serving/predict" in sections[name]
    examples = sections["serve_examples"]
    assert "inputs['examples'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in examples
    classify = sections["classify"]
    assert "inputs['inputs'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in classify
    assert "outputs['classes'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1, 5)" in classify
    assert "outputs['scores'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 5)" in classify
    assert "Method name is: tensorflow/serving/classify" in classify


def test_raw_ptb_record_at_1000_hz_matches_the_converter_path(loaded, tiny_spec, keras_model, decision, ptb_dir,
                                                              tmp_path):
    """No skew: serving_default on the raw 1000 Hz record == convert (500 Hz) -> TFRecord -> input pipeline."""
    config = conversion.ConversionConfig(source="ptb", input_dir=str(ptb_dir), sample_rate=500, max_records=2,
                                         split="0.5,0,0.5")
    manifest = conversion.run(config, str(tmp_path))
    assert tuple(manifest.leads) == tiny_spec.leads and manifest.window_samples == tiny_spec.window_samples
    record_id = "patient001/s0010_re"
    windows = []
    for split, info in manifest.splits.items():
        if info.shards:
            dataset = input_pipeline.make_dataset(str(tmp_path), manifest, split, tiny_spec, 8, training=False,
                                                  with_record_ids=True)
            for batch in dataset:
                probabilities = window_probabilities(keras_model, batch["signal"], tiny_spec).numpy()
                windows += [p for p, r in zip(probabilities, batch["record_id"].numpy()) if r.decode() == record_id]
    assert len(windows) == 3  # 38.4 s at 500 Hz holds three 10 s windows
    source = PTBSource(str(ptb_dir))
    record = source.load(next(ref for ref in source.refs()[0] if ref.record_id == record_id))
    assert record.sample_rate_hz == 1000
    raw = transform.select_leads(record, tiny_spec.leads)
    served = loaded.signatures["serving_default"](ecg=tf.constant(raw[None]), sample_rate=tf.constant([1000.0]))
    expected = decision.calibration.apply(np.mean(windows, axis=0)[None])[0]  # the record's mean, calibrated
    np.testing.assert_allclose(served["probabilities"].numpy()[0], expected, atol=1e-4)


def test_serve_examples_equals_the_keras_model_on_the_test_shards(tiny_export, loaded, tiny_spec, keras_model,
                                                                  decision):
    examples = _test_examples(tiny_export, tiny_spec)
    served = loaded.signatures["serve_examples"](examples=tf.constant(examples))
    signal = schema.parse_examples(tf.constant(examples), tiny_spec.window_samples, len(tiny_spec.leads))["signal"]
    expected = decision.calibration.apply(
        window_probabilities(keras_model, preprocess(signal, tiny_spec.preprocessing), tiny_spec).numpy())
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(served["class_id"].numpy(), expected.argmax(-1))
    np.testing.assert_allclose(served["confidence"].numpy(), expected.max(-1), atol=1e-5)


def test_one_request_with_two_sample_rates_is_refused(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError, match="must share one sample_rate"):
        loaded.signatures["serving_default"](ecg=tf.zeros([2, 1000, 12]), sample_rate=tf.constant([500.0, 250.0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole number of Hz"):
        loaded.signatures["serving_default"](ecg=tf.zeros([1, 1000, 12]), sample_rate=tf.constant([499.5]))


def test_short_recording_is_zero_padded_like_the_converter(loaded, tiny_spec):
    """A 4 s recording is one padded window: the same as sending that padded window as an example."""
    signal = warmup_signal(tiny_spec)[:2000]
    plan = transform.WindowPlan(tiny_spec.leads, 500, 5000, 5000, True, tiny_spec.labels)
    padded = transform.windows(signal, plan)[0]
    example = schema.make_example(padded, tiny_spec.leads, 500, [], [], "r", "p", 0)
    short = loaded.signatures["serving_default"](ecg=tf.constant(signal[None]), sample_rate=tf.constant([500.0]))
    whole = loaded.signatures["serve_examples"](examples=tf.constant([example]))
    np.testing.assert_allclose(short["probabilities"].numpy(), whole["probabilities"].numpy(), atol=1e-6)


def test_warmup_requests_replay_against_their_signatures(tiny_export, loaded):
    path = tiny_export["version"] / "assets.extra" / WARMUP_FILE
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log", "predict_log", "classify_log"]
    for log in logs[:2]:
        request = log.predict_log.request
        assert request.model_spec.name == "ecg"
        inputs = {key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert outputs["probabilities"].shape[0] == 1
    request = logs[2].classify_log.request
    examples = tf.constant([e.SerializeToString() for e in request.input.example_list.examples])
    assert loaded.signatures[request.model_spec.signature_name](inputs=examples)["scores"].shape[0] == 1


def test_tflite_models_agree_with_the_saved_model(tiny_export, tiny_spec, decision):
    report = json.loads((tiny_export["version"] / REPORT_FILE).read_text())
    assert report["agreement_windows"] == 4 and report["saved_model"]["latency_ms_batch1"] > 0
    float32 = report["tflite"]["float32"]  # the other variants' verdicts: tests/serving/tflite_test.py
    assert float32["usable"] and float32["argmax_agreement"] == 1.0 and float32["max_abs_prob_diff"] < 1e-4
    # The float model, run here on a test window and calibrated by the export's decision, reproduces the
    # SavedModel's probabilities (the TFLite model outputs them uncalibrated).
    runner = TFLiteRunner((tiny_export["version"] / float32["file"]).read_bytes())
    windows, examples = read_windows(str(tiny_export["data"]), "test", tiny_spec, 1)
    serve_examples = tf.saved_model.load(str(tiny_export["version"])).signatures["serve_examples"]
    saved = serve_examples(examples=tf.constant(examples))
    np.testing.assert_allclose(calibrate(runner(windows), decision.calibration).numpy(),
                               saved["probabilities"].numpy(), atol=1e-4)


def test_tflite_models_are_builtin_only_and_filter_by_fft(tiny_export, tiny_spec, decision):
    """Every exported TFLite model runs on the stock runtime (no Flex/custom op) and filters through RFFT2D."""
    report = json.loads((tiny_export["version"] / REPORT_FILE).read_text())
    written = [entry for entry in report["tflite"].values() if "file" in entry]  # a failed conversion writes none
    assert {"float32", "int8"} <= {kind for kind, entry in report["tflite"].items() if "file" in entry}
    for entry in written:
        ops = tflite_op_names((tiny_export["version"] / entry["file"]).read_bytes())
        assert "RFFT2D" in ops and not [op for op in ops if op.startswith("CUSTOM")], (entry["file"], ops)
    # The float32 model, calibrated, equals the SavedModel on every test window (the report's windows).
    runner = TFLiteRunner((tiny_export["version"] / report["tflite"]["float32"]["file"]).read_bytes())
    windows, examples = read_windows(str(tiny_export["data"]), "test", tiny_spec, report["agreement_windows"])
    saved = tf.saved_model.load(str(tiny_export["version"])).signatures["serve_examples"]
    raw = np.concatenate([runner(window[None]) for window in windows])
    np.testing.assert_allclose(calibrate(raw, decision.calibration).numpy(),
                               saved(examples=tf.constant(examples))["probabilities"].numpy(), rtol=0, atol=1e-5)


def test_failed_export_leaves_no_version_and_versions_count_up(tiny_export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_export["data"], broken)
    shard = next(broken.glob("train-*.tfrecord"))
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated: fails while reading calibration windows
    export_dir = tmp_path / "export"
    with pytest.raises(tf.errors.DataLossError):
        export_run(str(tiny_export["run"]), str(export_dir), "ecg", tflite=True, data_dir=str(broken))
    assert os.listdir(export_dir / "ecg") == [] and next_version(str(export_dir / "ecg")) == 1
    assert export_run(str(tiny_export["run"]), str(export_dir), "ecg", version=7) == str(export_dir / "ecg" / "7")
    assert next_version(str(export_dir / "ecg")) == 8
    with pytest.raises(FileExistsError, match="exists"):
        export_run(str(tiny_export["run"]), str(export_dir), "ecg", version=7)


def test_cli_validates_flags_before_any_work(tiny_export, tmp_path):
    result = subprocess.run([PYTHON, "-m", "ecg_tfx.export", f"--run_dir={tiny_export['run']}",
                             f"--export_dir={tmp_path}", "--tflite"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--tflite needs --data_dir" in result.stderr
    assert list(tmp_path.iterdir()) == []

"""The export of a seed ensemble (two tiny runs of different seeds): one SavedModel and TFLite models serving the
calibrated mean of the members' probabilities, with every signature, one preprocessing and its own decision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from graph_ops import saved_model_op_counts, tflite_op_counts
from plain_tf import run_plain_tf

from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec, window_probabilities
from ecg_tfx.dsp.preprocessing import preprocess
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.evaluation.evaluate import fit_decision
from ecg_tfx.models.ensemble import average, load_runs
from ecg_tfx.serving.decide import calibrate
from ecg_tfx.serving.exporter import REPORT_FILE
from ecg_tfx.serving.saved_model import SIGNATURES, WARMUP_FILE
from ecg_tfx.serving.tflite import DECISION_FILE, TFLiteRunner, read_windows


@pytest.fixture(scope="module")
def members(tiny_ensemble_export):
    return load_runs([str(run) for run in tiny_ensemble_export["runs"]])


def _served_decision(version) -> Decision:
    return Decision.load(str(version / "tflite" / "decision.json"))


def test_plain_tensorflow_serves_the_calibrated_mean_of_the_members_on_every_signature(tiny_ensemble_export,
                                                                                     members, tmp_path):
    """In a process without ecg_tfx: serving_default, serve_examples, classify and metadata all answer, and the
    probabilities are the ensemble decision's calibration of the mean of the members' probabilities."""
    models, spec = members
    signal, serialized = read_windows(str(tiny_ensemble_export["data"]), "test", spec)
    np.save(tmp_path / "signal.npy", signal)
    with tf.io.TFRecordWriter(str(tmp_path / "examples.tfrecord")) as writer:
        for example in serialized:
            writer.write(example)
    script = """
        import json, sys
        import numpy as np, tensorflow as tf
        model = tf.saved_model.load(sys.argv[1])
        signal = np.load("signal.npy")
        examples = tf.constant([record.numpy() for record in tf.data.TFRecordDataset("examples.tfrecord")])
        rate = tf.fill([len(signal)], 500.0)
        out = {
            "serving_default": model.signatures["serving_default"](ecg=tf.constant(signal), sample_rate=rate),
            "serve_examples": model.signatures["serve_examples"](examples=examples),
            "classify": model.signatures["classify"](inputs=examples),
            "metadata": model.metadata(),
        }
        print(json.dumps({"signatures": sorted(model.signatures), **{
            name: {key: value.numpy().tolist() if value.dtype != tf.string
                   else np.vectorize(bytes.decode)(value.numpy()).tolist() for key, value in outputs.items()}
            for name, outputs in out.items()}}))
    """
    result = run_plain_tf(script, str(tiny_ensemble_export["version"]), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["signatures"] == sorted(SIGNATURES)
    decision = Decision.from_json(json.loads(out["metadata"]["decision_json"]))
    assert decision == _served_decision(tiny_ensemble_export["version"])
    raw = [window_probabilities(model, preprocess(tf.constant(signal), spec.preprocessing), spec).numpy()
           for model in models]
    assert np.abs(raw[0] - raw[1]).max() > 1e-3  # the members differ, so the mean is not either of them
    expected = decision.calibration.apply(np.mean(raw, axis=0))  # mean first, then the ensemble's calibration
    for probabilities in (out["serving_default"]["probabilities"], out["serve_examples"]["probabilities"],
                          out["classify"]["scores"]):
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    for name in ("serving_default", "serve_examples"):
        assert out[name]["class_name"] == [spec.labels[i] for i in expected.argmax(-1)]
        assert len(out[name]["decision"]) == len(signal) and len(out[name]["signal_unreadable"]) == len(signal)
    assert out["classify"]["classes"][0] == list(spec.labels)
    assert ModelSpec.from_json(json.loads(out["metadata"]["model_spec_json"])) == spec
    assert (tiny_ensemble_export["version"] / "assets.extra" / WARMUP_FILE).stat().st_size > 0


def test_the_decision_is_fitted_on_the_ensembles_own_validation_outputs(tiny_ensemble_export, tiny_export,
                                                                        members):
    models, spec = members
    data_dir = str(tiny_ensemble_export["data"])
    served = _served_decision(tiny_ensemble_export["version"])
    assert served == fit_decision(average(models), spec, data_dir, Manifest.load(data_dir))
    assert served.fitted_on["split"] == "validation"
    assert served != _served_decision(tiny_export["version"])  # not the first member's (fitted on its outputs)


def test_members_side_by_side_behind_one_preprocessing(tiny_ensemble_export, tiny_export, members):
    """Against the export of the first member alone: the filter's FFTs once, the networks' layers twice, the
    weights twice (float32: 4 bytes per parameter)."""
    models, _ = members
    one, two = tiny_export["version"], tiny_ensemble_export["version"]
    single_ops, ensemble_ops = saved_model_op_counts(str(one)), saved_model_op_counts(str(two))
    for op in ("RFFT", "IRFFT"):
        assert ensemble_ops[op] == single_ops[op] > 0, op

    def variables_bytes(version) -> int:
        return sum(f.stat().st_size for f in (version / "variables").iterdir())

    assert variables_bytes(two) == pytest.approx(2 * variables_bytes(one), rel=0.01)
    single_tflite = (one / "tflite" / "model_float32.tflite").read_bytes()
    ensemble_tflite = (two / "tflite" / "model_float32.tflite").read_bytes()
    single_ops, ensemble_ops = tflite_op_counts(single_tflite), tflite_op_counts(ensemble_tflite)
    assert ensemble_ops["RFFT2D"] == single_ops["RFFT2D"] > 0
    for op in ("CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D"):
        assert ensemble_ops[op] == 2 * single_ops[op] > 0, op
    assert len(ensemble_tflite) - len(single_tflite) == pytest.approx(4 * models[1].count_params(), rel=0.01)


def test_tflite_of_the_ensemble_has_builtin_ops_only_and_agrees(tiny_ensemble_export, members):
    _, spec = members
    version = tiny_ensemble_export["version"]
    report = json.loads((version / REPORT_FILE).read_text())
    assert report["runs"] == [str(run) for run in tiny_ensemble_export["runs"]]
    assert report["tflite"]["float32"]["verdict"] == "usable"
    for entry in (e for e in report["tflite"].values() if "file" in e):
        ops = tflite_op_counts((version / entry["file"]).read_bytes())
        assert not [op for op in ops if op.startswith("CUSTOM")], (entry["file"], ops)
    signal, serialized = read_windows(str(tiny_ensemble_export["data"]), "test", spec)
    saved = tf.saved_model.load(str(version)).signatures["serve_examples"]
    expected = saved(examples=tf.constant(serialized))["probabilities"].numpy()
    runner = TFLiteRunner((version / "tflite" / "model_float32.tflite").read_bytes())
    raw = np.concatenate([runner(window[None]) for window in signal])  # TFLite models answer uncalibrated
    decision = Decision.load(str(version / "tflite" / DECISION_FILE))
    np.testing.assert_allclose(calibrate(raw, decision.calibration).numpy(), expected, atol=1e-4)


def test_the_model_card_names_the_member_runs(tiny_ensemble_export):
    extra = tiny_ensemble_export["version"] / "assets.extra"
    card = json.loads((extra / "model_card.json").read_text())
    runs = [str(run) for run in tiny_ensemble_export["runs"]]
    assert card["runs"] == runs
    assert card["test_metrics"] is None
    assert any(f"--run_dir={','.join(runs)}" in limit for limit in card["limits"])
    text = (extra / "model_card.md").read_text()
    assert "a seed ensemble: the mean of their probabilities" in text and all(f"`{run}`" in text for run in runs)

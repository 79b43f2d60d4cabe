"""evaluate() and its CLI on a tiny synthetic conversion with a tiny untrained model."""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import subprocess
import sys
from collections import defaultdict

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image

from ecg_tfx.core import schema
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.data import conversion
from ecg_tfx.data.conversion import ConversionConfig
from ecg_tfx.dsp.preprocessing import preprocess
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.evaluation.evaluate import evaluate, fit_decision

REPO = pathlib.Path(__file__).resolve().parents[2]
RATE = 100
WINDOW = 250  # 2.5 s windows: 4 per 10 s record
INPUT, EVAL_STRIDE = 200, 25  # 3 model inputs per window, at offsets 0, 25, 50
OUTPUTS = ("metrics.json", "classification_report.txt", "confusion_matrix.png", "roc.png", "sample_predictions.png",
           "reliability.png", "coverage.png", "predictions.csv", "record_predictions.csv")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, Manifest]:
    out = tmp_path_factory.mktemp("tfrecords")
    manifest = conversion.run(ConversionConfig(
        synthetic_patients=12, synthetic_records_per_patient=2, synthetic_duration_s=10, window_seconds=2.5,
        sample_rate=RATE, split="0.5,0.25,0.25"), str(out))
    return str(out), manifest


def make_spec(manifest: Manifest, multi_label: bool = False) -> ModelSpec:
    return dataclasses.replace(manifest.model_spec("tiny", INPUT / RATE, EVAL_STRIDE / RATE), multi_label=multi_label)


def tiny_model(spec: ModelSpec) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((None, len(spec.leads))),
        keras.layers.Conv1D(4, 9, strides=4, activation="relu"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(len(spec.labels), activation="sigmoid" if spec.multi_label else "softmax"),
    ])


def read_csv(path: pathlib.Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def probabilities(rows: list[dict], labels: tuple[str, ...]) -> np.ndarray:
    return np.array([[float(row[f"p_{label}"]) for label in labels] for row in rows])


def assert_png(path: pathlib.Path) -> None:
    pixels = image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 300, pixels.shape
    assert pixels[..., :3].std() > 0.05  # drawn, not blank


def expected_window_probabilities(model: keras.Model, spec: ModelSpec, shard: str) -> np.ndarray:
    """Independently of the pipeline: decode each stored window, crop by hand, average the model's outputs."""
    windows = np.stack([schema.decode_example(r.numpy())["signal"] for r in tf.data.TFRecordDataset(shard)])
    windows = preprocess(windows, spec.preprocessing).numpy()
    crops = np.stack([windows[:, start:start + INPUT] for start in range(0, WINDOW - INPUT + 1, EVAL_STRIDE)], 1)
    outputs = model.predict(crops.reshape(-1, INPUT, len(spec.leads)), verbose=0)
    return outputs.reshape(len(windows), crops.shape[1], -1).mean(axis=1)


def test_evaluate_writes_consistent_metrics_and_figures(data, tmp_path):
    data_dir, manifest = data
    spec = make_spec(manifest)
    model = tiny_model(spec)
    result = evaluate(model, spec, data_dir, manifest, "test", str(tmp_path), batch_size=7)

    for name in OUTPUTS:
        assert (tmp_path / name).stat().st_size > 0, name
    for name in OUTPUTS[2:7]:
        assert_png(tmp_path / name)
    split = manifest.splits["test"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["split"] == "test"
    assert (saved["examples"], saved["records"]) == (split.examples, split.records)
    assert saved["window"]["examples"] == split.examples and saved["record"]["examples"] == split.records
    assert {k: v for k, v in saved["record"]["class_counts"].items() if v} == split.class_records
    assert {k: v for k, v in saved["window"]["class_counts"].items() if v} == split.class_examples
    report = (tmp_path / "classification_report.txt").read_text()
    assert "Windows (n=" in report and "Records (n=" in report

    windows = read_csv(tmp_path / "predictions.csv")
    records = read_csv(tmp_path / "record_predictions.csv")
    assert len(windows) == split.examples and len(records) == split.records
    assert len(split.shards) == 1  # so the pipeline's window order is the shard's
    expected = expected_window_probabilities(model, spec, str(pathlib.Path(data_dir) / split.shards[0].file))
    np.testing.assert_allclose(probabilities(windows, spec.labels), expected, atol=1e-5)

    by_record = defaultdict(list)
    for row, p in zip(windows, probabilities(windows, spec.labels)):
        by_record[row["record_id"]].append(p)
    assert [row["record_id"] for row in records] == sorted(by_record)
    np.testing.assert_allclose(probabilities(records, spec.labels),
                               [np.mean(by_record[row["record_id"]], axis=0) for row in records], atol=2e-6)
    accuracy = np.mean([row["true"] == row["predicted"] for row in records])
    assert saved["record"]["accuracy"] == pytest.approx(accuracy)


def test_evaluate_multi_label(data, tmp_path):
    data_dir, manifest = data
    spec = make_spec(manifest, multi_label=True)
    result = evaluate(tiny_model(spec), spec, data_dir, manifest, "validation", str(tmp_path))

    assert result["records"] == manifest.splits["validation"].records
    assert set(result["record"]["confusion_matrices"]) == set(spec.labels)
    for name in ("confusion_matrix.png", "roc.png", "sample_predictions.png"):
        assert_png(tmp_path / name)


def test_decision_fitted_on_validation_is_assessed_on_test(data, tmp_path):
    """The served decision: fitted on validation records only, then its calibration, thresholds, abstention and
    CIs are reported per test record."""
    data_dir, manifest = data
    spec = make_spec(manifest, multi_label=True)
    model = tiny_model(spec)
    decision = fit_decision(model, spec, data_dir, manifest)
    assert decision.fitted_on == {"split": "validation", "records": manifest.splits["validation"].records}
    assert decision.calibration != Decision.default(len(spec.labels), True).calibration  # something was fitted
    evaluate(model, spec, data_dir, manifest, "test", str(tmp_path), decision=decision)
    assessed = json.loads((tmp_path / "metrics.json").read_text())["decision"]
    assert assessed["decision"] == json.loads(json.dumps(decision.to_json()))
    assert assessed["records"] == manifest.splits["test"].records
    assert set(assessed["per_class"]) == set(spec.labels)
    records = read_csv(tmp_path / "record_predictions.csv")
    raw = probabilities(records, spec.labels)
    targets = np.array([[label in row["true"].split(", ") for label in spec.labels] for row in records])
    present = decision.present(decision.calibration.apply(raw))
    assert assessed["accuracy"] == pytest.approx(np.mean(np.all(present == targets, axis=1)))
    for name in ("roc_auc_macro", "f1_macro", "accuracy"):
        low, high = assessed["confidence_intervals"][name] or (0, 1)
        assert 0 <= low <= high <= 1
    abstention = assessed["abstention"]
    assert abstention["threshold"] == decision.abstain_below
    answered = decision.confidence(decision.calibration.apply(raw)) >= decision.abstain_below
    assert abstention["coverage"] == pytest.approx(answered.mean())
    for name in ("reliability.png", "coverage.png"):
        assert_png(tmp_path / name)


def test_evaluate_rejects_data_of_another_model(data, tmp_path):
    data_dir, manifest = data
    spec = dataclasses.replace(make_spec(manifest), labels=("normal", "other"))
    with pytest.raises(ValueError, match="labels: model"):
        evaluate(tiny_model(spec), spec, data_dir, manifest, "test", str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_cli_evaluates_a_run_folder(data, tmp_path):
    data_dir, manifest = data
    spec = make_spec(manifest)
    spec.save(str(tmp_path))
    tiny_model(spec).save(tmp_path / "best.keras")
    # Keras CSVLogger format; epoch 1 logged twice, as after a resume from a backup.
    (tmp_path / "history.csv").write_text(
        "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss\n"
        "0,0.40,0.001,1.50,0.35,1.60\n1,0.55,0.001,1.20,0.45,1.40\n1,0.56,0.001,1.19,0.46,1.38\n"
        "2,0.70,0.0005,0.90,0.60,1.10\n")
    command = [sys.executable, "-m", "ecg_tfx.evaluate", f"--run_dir={tmp_path}", f"--data_dir={data_dir}",
               "--split=validation", "--checkpoint=best"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    split = manifest.splits["validation"]
    assert f"validation: {split.examples} windows, {split.records} records" in done.stdout
    out = tmp_path / "best" / "validation"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert json.loads((out / "metrics.json").read_text())["records"] == split.records
    assert_png(tmp_path / "training_history.png")

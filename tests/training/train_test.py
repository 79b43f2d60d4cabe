"""The trainer: real Keras training (tiny data): the command's whole run, the automatic precision choice, the
schedule, checkpoints and resumes after a kill. Two mirrored replicas train in fine_tuning_test, two workers in
multi_worker_test, the mixed precision policies in serving/precision_export_test (whose runs it exports)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.data import conversion, input_pipeline
from ecg_tfx.data.conversion import ConversionConfig
from ecg_tfx.training import distribute, trainer
from ecg_tfx.training.callbacks import BestCheckpoint, CSVLogger, FiniteWeights, TrainingDiverged
from ecg_tfx.training.config import TrainConfig

TINY = ConversionConfig(synthetic_patients=20, synthetic_records_per_patient=2, synthetic_duration_s=10,
                        sample_rate=100, shard_size_mb=0.2)  # split_seed 0
TINY_FLAGS = ["--synthetic_patients=20", "--synthetic_records_per_patient=2", "--synthetic_duration_s=10",
              "--sample_rate=100", "--shard_size_mb=0.2"]  # the same conversion, as `train --convert` takes it


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tiny"))
    conversion.run(TINY, out)
    return out


def run_train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "ecg_tfx.train", *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def history(run_dir: pathlib.Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_the_cli_reuses_a_conversion_of_any_training_seed_and_trains_the_features_model_two_epochs(data_dir,
                                                                                                    tmp_path):
    """`train --convert` with training seed 2 reuses data converted with split seed 0 and says how many records it
    skipped; then the CLI's whole run, for the features model (no convolutions). A CNN's CLI run over two mirrored
    replicas is fine_tuning_test's; each model's own training, saving and reloading is in models_test."""
    model = "features"
    manifest = (pathlib.Path(data_dir) / "manifest.json").read_bytes()
    result = run_train("--convert", *TINY_FLAGS, f"--data_dir={data_dir}", f"--run_dir={tmp_path}", "--seed=2",
                       f"--model={model}", "--epochs=2", "--batch_size=8", "--input_seconds=5", "--export=false")
    assert "already holds this conversion" in result.stderr
    assert "  skipped 0 records\n" in result.stdout  # the conversion's summary, skip counts included
    assert (pathlib.Path(data_dir) / "manifest.json").read_bytes() == manifest
    assert "--seed=2" in (tmp_path / "flags.txt").read_text().split()
    for name in ("model.keras", "best.keras", "model_spec.json", "labels.json", "flags.txt", "history.csv",
                 "training_history.png", "metrics.json", "classification_report.txt", "confusion_matrix.png",
                 "roc.png", "sample_predictions.png", "decision.json", "reliability.png", "coverage.png"):
        assert (tmp_path / name).is_file(), name
    assert [row["epoch"] for row in history(tmp_path)] == ["0", "1"]
    decision = json.loads((tmp_path / "decision.json").read_text())
    assert decision["fitted_on"]["split"] == "validation"  # and test metrics assess that decision:
    assert json.loads((tmp_path / "metrics.json").read_text())["decision"]["decision"] == decision
    spec = ModelSpec.load(str(tmp_path))
    assert spec.model == model and spec.input_samples == 500 and len(spec.leads) == 12
    assert json.loads((tmp_path / "labels.json").read_text())["labels"] == list(spec.labels)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["precision"] in distribute.PRECISIONS and info["precision_reason"]
    assert info["replicas"] == 1
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    probabilities = reloaded(np.zeros((2, 500, 12), np.float32))
    assert probabilities.shape == (2, 5)


def test_one_cycle_schedule_spans_the_run(data_dir, tmp_path):
    """Through the library, as tests and benchmarks call it: a TrainConfig, no flags."""
    config = TrainConfig(data_dir=data_dir, run_dir=str(tmp_path), epochs=2, batch_size=8, export=False,
                         precision="float32", lr_schedule="one_cycle", learning_rate=0.01, weight_decay=0.02)
    info = trainer.train(config, flags_text="--epochs=2\n")
    assert info["epochs_run"] == 2 and (tmp_path / "flags.txt").read_text() == "--epochs=2\n"
    optimizer = keras.saving.load_model(tmp_path / "model.keras").optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == pytest.approx(0.02)
    steps_per_epoch = int(optimizer.iterations) // 2
    assert steps_per_epoch == input_pipeline.batches_per_epoch(
        Manifest.load(data_dir), "train", ModelSpec.load(str(tmp_path)), 8, True, False)
    schedule = optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(0.01 / 25)
    assert float(schedule(int(0.3 * 2 * steps_per_epoch))) == pytest.approx(0.01)  # the peak, after warm-up
    assert float(optimizer.learning_rate) == pytest.approx(0.01 * 1e-4, rel=1e-3)  # annealed by the last step
    assert "learning_rate" not in history(tmp_path)[0]  # no ReduceLROnPlateau fighting the schedule


@pytest.mark.parametrize("gpus, cpu, tpu, expected", [
    ([(8, 0)], set(), False, "mixed_float16"),
    ([(7, 0), (8, 6)], set(), False, "mixed_float16"),
    ([(6, 1)], {"avx512_bf16"}, False, "float32"),
    ([], {"avx512_bf16", "avx512f"}, False, "mixed_bfloat16"),
    ([], {"amx_bf16"}, False, "mixed_bfloat16"),
    ([], {"avx2"}, False, "float32"),
    ([], set(), True, "mixed_bfloat16"),
])
def test_auto_precision_follows_the_hardware(gpus, cpu, tpu, expected):
    policy, reason = distribute.choose_precision("auto", gpus=gpus, cpu=cpu, tpu=tpu)
    assert policy == expected and reason
    assert distribute.choose_precision("float32", gpus=gpus, cpu=cpu)[0] == "float32"


def test_best_checkpoint_ignores_warmup_epochs(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback = BestCheckpoint(str(tmp_path / "best.keras"), monitor="val_auc", mode="max", save_best_only=True,
                              start_from_epoch=2)
    callback.set_model(model)
    callback.on_epoch_end(0, {"val_auc": 0.99})  # a lucky noisy first epoch
    assert not (tmp_path / "best.keras").exists()
    callback.on_epoch_end(2, {"val_auc": 0.7})
    first = (tmp_path / "best.keras").stat().st_mtime_ns
    callback.on_epoch_end(3, {"val_auc": 0.8})
    assert (tmp_path / "best.keras").stat().st_mtime_ns != first
    assert callback.best == 0.8
    assert [path.name for path in tmp_path.iterdir()] == ["best.keras"]  # written beside it, then renamed


class _KilledWhileFinishing(Exception):
    """Stands for a kill after training, while the run evaluates and exports."""


def test_a_run_killed_while_it_evaluates_resumes_without_training_again(data_dir, tmp_path, monkeypatch):
    """Training ended (stopped early here), model.keras was written, then the kill came during evaluation: the rerun
    finds the finished training's backup, runs no epoch, and completes the run folder with the same model. A rerun
    with other training flags is refused and leaves the backup as it was; other caching is no such change."""
    config = TrainConfig(data_dir=data_dir, run_dir=str(tmp_path), epochs=6, batch_size=8, export=False,
                         precision="float32", monitor="val_accuracy", patience=1, warmup_epochs=1)

    def killed(*args, **kwargs) -> None:
        raise _KilledWhileFinishing

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "finish", killed)
        with pytest.raises(_KilledWhileFinishing):
            trainer.train(config)
    first = weights(tmp_path / "model.keras")
    rows = history(tmp_path)
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 6  # none left
    assert not (tmp_path / "metrics.json").exists()
    backup = {path.name: path.read_bytes() for path in (tmp_path / "backup").iterdir()}
    with pytest.raises(ValueError, match=r"other training flags \(epochs 6 -> 8, learning_rate 0.001 -> 0.01\)"):
        trainer.train(dataclasses.replace(config, epochs=8, learning_rate=0.01))
    assert {path.name: path.read_bytes() for path in (tmp_path / "backup").iterdir()} == backup
    info = trainer.train(dataclasses.replace(config, cache=""))
    assert history(tmp_path) == rows and info["epochs_run"] == len(rows)  # no epoch trained again
    assert len(rows) < 6, "the run should have stopped early"
    for resumed, original in zip(weights(tmp_path / "model.keras"), first, strict=True):
        np.testing.assert_array_equal(resumed, original)
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / "backup").exists()


def test_a_resumed_log_keeps_whole_rows_of_the_epochs_before_it(tmp_path):
    """Epochs 0 and 1 were backed up; the kill came while epoch 2's row was being written (cut short), after an
    earlier torn row of a killed attempt. The resumed log keeps epochs 0 and 1 and appends from epoch 2 on."""
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_auc\n0,0.9,0.6\n1,0.8,0.7\n\n1\n2,0.7")
    logger = CSVLogger(str(path), first_epoch=2)
    logger.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": 0.6, "val_auc": 0.75})
    logger.on_train_end()
    assert [row["epoch"] for row in history(tmp_path)] == ["0", "1", "2"]
    assert history(tmp_path)[-1]["loss"] == "0.6"


def test_a_checkpoint_killed_mid_write_leaves_the_previous_best_whole(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback = BestCheckpoint(str(tmp_path / "best.keras"), monitor="loss", mode="min", save_best_only=True)
    callback.set_model(model)
    callback.on_epoch_end(0, {"loss": 1.0})
    saved = weights(tmp_path / "best.keras")
    model.layers[0].kernel.assign(model.layers[0].kernel + 1.0)

    def dies_mid_write(path: str, *args, **kwargs) -> None:
        pathlib.Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # stands for the kill

    with monkeypatch.context() as patch:
        patch.setattr(model, "save", dies_mid_write)
        with pytest.raises(KeyboardInterrupt):
            callback.on_epoch_end(1, {"loss": 0.5})
    assert all(np.array_equal(a, b) for a, b in zip(weights(tmp_path / "best.keras"), saved, strict=True))
    resumed = BestCheckpoint(str(tmp_path / "best.keras"), monitor="loss", mode="min", save_best_only=True)
    resumed.set_model(model)
    resumed.best = callback.best  # as ResumableBackup restores it
    resumed.on_epoch_end(2, {"loss": 0.4})  # the resumed run's next best overwrites the torn write
    assert [path.name for path in tmp_path.iterdir()] == ["best.keras"]
    assert all(np.array_equal(a, b) for a, b in zip(weights(tmp_path / "best.keras"), model.get_weights(),
                                                    strict=True))


def test_a_not_a_number_score_does_not_stop_the_checkpoints(tmp_path):
    """Keras keeps a NaN first score as the best (and saves it); no later score beats it, and nothing is saved."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback = BestCheckpoint(str(tmp_path / "best.keras"), monitor="loss", mode="min", save_best_only=True)
    callback.set_model(model)
    for epoch, loss in enumerate([float("nan"), 0.5, 0.4]):
        callback.on_epoch_end(epoch, {"loss": loss})
    assert [path.name for path in tmp_path.iterdir()] == ["best.keras"]


def test_a_run_whose_weights_stop_being_finite_stops_at_that_step_before_any_checkpoint(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)

    def fit(model: keras.Model, name: str, inputs: np.ndarray = x) -> None:
        model.compile(optimizer="sgd", loss="binary_crossentropy")
        best = BestCheckpoint(str(tmp_path / name), monitor="loss", mode="min", save_best_only=True)
        model.fit(inputs, y, epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[FiniteWeights(), best])

    def model() -> keras.Model:
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(),
                                 keras.layers.Dense(1, activation="sigmoid")])

    fit(model(), "healthy.keras")
    assert (tmp_path / "healthy.keras").exists()
    diverged = model()
    diverged.layers[1].moving_variance.assign(np.full(3, np.nan, np.float32))  # as the collapsed PTB-XL runs had
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 1: .*moving_variance is not finite.*--learning_rate"):
        fit(diverged, "diverged.keras")
    poisoned = x.copy()
    poisoned[26] = np.inf  # the 4th batch of 8: its step makes every weight NaN
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 4: .*dense.*kernel is not finite"):
        fit(model(), "poisoned.keras", poisoned)
    assert not (tmp_path / "diverged.keras").exists() and not (tmp_path / "poisoned.keras").exists()


def weights(path: pathlib.Path) -> list[np.ndarray]:
    return keras.saving.load_model(path).get_weights()


def test_killed_run_resumes_to_what_an_uninterrupted_run_ends_with(tmp_path):
    """Killed after its best epoch, a resumed run keeps that best: same best.keras, model.keras, early stop, history.

    Deterministic ops (--deterministic) make the two runs' arithmetic identical, so the weights are compared
    bit for bit: any state the resumed run lost (a best score, patience count, best weights, a dropout seed,
    the data position) would show as a difference.
    """
    data = tmp_path / "data"
    conversion.run(ConversionConfig(synthetic_patients=12, synthetic_records_per_patient=2, synthetic_duration_s=10,
                                    sample_rate=100, shard_size_mb=0.02), str(data))
    args = [f"--data_dir={data}", "--epochs=8", "--batch_size=8", "--input_seconds=2.5", "--export=false",
            "--precision=float32", "--deterministic", "--monitor=val_loss", "--patience=2", "--warmup_epochs=1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_train(*args, f"--run_dir={whole}")
    expected = history(whole)
    losses = [float(row["val_loss"]) for row in expected]
    best_epoch = 1 + int(np.argmin(losses[1:]))
    stopped = len(expected) - 1
    assert stopped < 7 and stopped - best_epoch == 2, "the uninterrupted run should stop early, 2 epochs after its best"

    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "ecg_tfx.train", *args, f"--run_dir={killed}"],
                                   stdout=out, stderr=subprocess.STDOUT)
    metadata = killed / "backup" / "training_metadata.json"
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline and (
            not metadata.exists() or json.loads(metadata.read_text())["epoch"] <= best_epoch):
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before it could be killed: {log.read_text()[-3000:]}"
    os.kill(process.pid, signal.SIGKILL)  # after its best epoch, before its early stop
    process.wait()
    result = run_train(*args, f"--run_dir={killed}", timeout=400)
    resumed_at = int(result.stdout.split("Epoch ", 1)[1].split("/", 1)[0]) - 1
    assert best_epoch < resumed_at <= stopped, "the kill should fall between the best epoch and the early stop"

    assert history(killed) == expected  # every epoch once, the same numbers
    for name in ("best.keras", "model.keras"):
        for resumed, uninterrupted in zip(weights(killed / name), weights(whole / name), strict=True):
            np.testing.assert_array_equal(resumed, uninterrupted)
    info = json.loads((killed / "run_info.json").read_text())
    assert info["epochs_run"] == json.loads((whole / "run_info.json").read_text())["epochs_run"] == stopped + 1
    assert not (killed / "backup").exists()

"""Fine-tuning a warm-started body: frozen epochs (under tf.distribute and mixed precision, and across a resume)
and the body's learning-rate factor, measured on one real step."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ecg_tfx.core import storage
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.data import input_pipeline
from ecg_tfx.models.parts import body_layers, head_layers
from ecg_tfx.training import trainer
from ecg_tfx.training.config import TrainConfig
from ecg_tfx.training.fine_tuning import BodyScaledAdamW, FreezeBody, portable
from ecg_tfx.training.warm_start import warm_start


def _weights(layers: list[keras.layers.Layer]) -> list[np.ndarray]:
    return [w for layer in layers for w in layer.get_weights()]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_the_body_is_frozen_for_its_epochs_then_trains_under_a_strategy_and_mixed_precision(
        tiny_conversion, tiny_run, mixed_bfloat16):
    """Epoch 0 frozen (the body's weights and BatchNorm statistics stay the pretrained ones), epoch 1 trains it:
    the switch rebuilds the train function inside MirroredStrategy's distributed step, under mixed_bfloat16."""
    data_dir, manifest = tiny_conversion
    spec = ModelSpec.load(str(tiny_run))
    config = TrainConfig(data_dir=str(data_dir), run_dir="", init_from=str(tiny_run), freeze_epochs=1,
                         body_lr_factor=0.5, weight_decay=0.01)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = trainer.compile_model(config, spec, train_steps=4)
    warm_start(model, spec, str(tiny_run))
    pretrained_body, pretrained_head = _weights(body_layers(model)), _weights(head_layers(model))
    after: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: after.append(
        (_weights(body_layers(model)), _weights(head_layers(model)))))
    dataset = input_pipeline.make_dataset(str(data_dir), manifest, "train", spec, 16, training=False).take(2)
    model.fit(dataset, epochs=2, verbose=0, callbacks=[FreezeBody(1), record])
    (body_0, head_0), (body_1, _) = after
    assert _same(body_0, pretrained_body), "the body changed while frozen"
    assert not _same(head_0, pretrained_head), "the head did not train"
    assert not _same(body_1, pretrained_body), "the body did not train once unfrozen"
    assert all(layer.trainable for layer in model.layers) and isinstance(model.optimizer, BodyScaledAdamW)


def test_the_body_learns_at_its_factor_of_the_learning_rate_on_one_step(tiny_conversion, tiny_run):
    """One AdamW step from the same weights on the same batch: the body moves 0.1 times as far (its update and its
    weight decay), the head as far as without the factor."""
    data_dir, manifest = tiny_conversion
    spec = ModelSpec.load(str(tiny_run))
    x, y = next(iter(input_pipeline.make_dataset(str(data_dir), manifest, "train", spec, 16, training=False)))
    steps = {}
    for factor in (1.0, 0.1):
        config = TrainConfig(data_dir=str(data_dir), run_dir="", init_from=str(tiny_run), body_lr_factor=factor,
                             weight_decay=0.05)
        keras.utils.set_random_seed(0)  # the same dropout seeds in both models
        model = trainer.compile_model(config, spec, train_steps=1)
        warm_start(model, spec, str(tiny_run))
        before = [v.numpy() for v in model.trainable_variables]
        keras.utils.set_random_seed(0)  # the same dropout masks
        model.train_on_batch(x, y)
        moved = {v.path: v.numpy() - start for v, start in zip(model.trainable_variables, before, strict=True)}
        body = {v.path for layer in body_layers(model) for v in layer.trainable_weights}
        steps[factor] = [np.linalg.norm(np.concatenate([d.ravel() for p, d in moved.items() if (p in body) == part]))
                         for part in (True, False)]
    (body_full, head_full), (body_scaled, head_scaled) = steps[1.0], steps[0.1]
    assert body_full > 0 and head_full > 0
    assert body_scaled / body_full == pytest.approx(0.1, rel=1e-3)
    assert head_scaled / head_full == pytest.approx(1.0, rel=1e-3)


class _Killed(Exception):
    """Stands for a kill after the first epoch's backup."""


def test_a_run_resumed_while_frozen_keeps_the_body_frozen(tiny_conversion, tiny_run, tmp_path, monkeypatch):
    """Killed after epoch 0's backup and resumed at epoch 1, which --freeze_epochs=2 freezes too: the final body is
    the pretrained one, as in an uninterrupted run, and the run folder records where it started. warmup_epochs=1
    makes epoch 1's weights the final model's (the best epoch is chosen from epoch 1 on). Unfreezing is tested above."""
    freeze_epochs = 2
    data_dir, _ = tiny_conversion
    config = TrainConfig(data_dir=str(data_dir), run_dir=str(tmp_path), model="cnn", epochs=2, batch_size=16,
                         input_seconds=2.5, eval_stride_seconds=2.5, warmup_epochs=1, precision="float32",
                         export=False, init_from=str(tiny_run), freeze_epochs=freeze_epochs)

    def kill_after_first_epoch(epoch: int, logs: dict) -> None:
        raise _Killed

    with monkeypatch.context() as patch:
        real = trainer.callbacks
        patch.setattr(trainer, "callbacks", lambda *args: [*real(*args), keras.callbacks.LambdaCallback(
            on_epoch_end=kill_after_first_epoch)])  # after the backup, which is last
        with pytest.raises(_Killed):
            trainer.train(config)
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    info = trainer.train(config)
    assert info["epochs_run"] == 2 and not (tmp_path / "backup").exists()
    pretrained = keras.saving.load_model(tiny_run / "model.keras", compile=False)
    final = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert _same(_weights(body_layers(final)), _weights(body_layers(pretrained)))
    assert not _same(_weights(head_layers(final)), _weights(head_layers(pretrained)))
    recorded = json.loads((tmp_path / "run_info.json").read_text())["init_from"]
    assert recorded["run_dir"] == str(tiny_run) and recorded["freeze_epochs"] == freeze_epochs
    assert recorded["model_sha256"] == storage.sha256(str(tiny_run / "model.keras"))
    assert recorded["head"].startswith("reused") and recorded["new_layers"] == []
    assert (tmp_path / "metrics.json").is_file()  # evaluated as any run


def test_a_warm_started_run_fine_tunes_over_two_replicas(tiny_conversion, tiny_run, tmp_path):
    """The command over two mirrored replicas (two virtual CPUs) under mixed_bfloat16: frozen, then unfrozen at a
    lower body rate; the final model (epoch 1, after the warm-up) has left the pretrained body."""
    data_dir, _ = tiny_conversion
    result = subprocess.run(
        [sys.executable, "-m", "ecg_tfx.train", f"--data_dir={data_dir}", f"--run_dir={tmp_path}",
         f"--init_from={tiny_run}", "--model=cnn", "--input_seconds=2.5", "--eval_stride_seconds=2.5", "--epochs=2",
         "--batch_size=8", "--freeze_epochs=1", "--body_lr_factor=0.5", "--strategy=mirrored", "--virtual_cpus=2",
         "--precision=mixed_bfloat16", "--export=false"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["strategy"] == "MirroredStrategy" and info["replicas"] == 2
    assert info["precision"] == "mixed_bfloat16" and info["epochs_run"] == 2
    assert info["init_from"]["body_lr_factor"] == 0.5 and info["init_from"]["freeze_epochs"] == 1
    pretrained = keras.saving.load_model(tiny_run / "model.keras", compile=False)
    final = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert not _same(_weights(body_layers(final)), _weights(body_layers(pretrained)))
    # Both model files load in plain Keras, compiled as by default, with the weights the run kept:
    signal = np.random.default_rng(0).normal(size=(2, *final.input_shape[1:])).astype(np.float32)
    np.save(tmp_path / "signal.npy", signal)
    plain = subprocess.run([sys.executable, "-c", _PLAIN_KERAS, str(tmp_path)], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    for name in ("model.keras", "best.keras"):
        ours = keras.saving.load_model(tmp_path / name, compile=False)
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), ours(signal), rtol=1e-5, atol=1e-6)


def test_a_float16_runs_model_files_carry_no_body_scaled_optimizer():
    """Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer: `portable` looks inside it."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        signal = keras.Input((4,))
        model = keras.Model(signal, keras.layers.Dense(2)(signal))  # functional, as every model of ours
        model.compile(BodyScaledAdamW(1e-3, weight_decay=0.01, body_lr_factor=0.5), "mse")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    copy = portable(model)
    assert copy is not model and not copy.compiled and copy.weights[0] is model.weights[0]


_PLAIN_KERAS = """
import pathlib, sys
import keras, numpy as np
folder = pathlib.Path(sys.argv[1])
for name in ("model.keras", "best.keras"):
    model = keras.saving.load_model(folder / name)
    np.save(folder / f"{name}.npy", model(np.load(folder / "signal.npy")))
assert not any(module.startswith("ecg_tfx") for module in sys.modules)
"""

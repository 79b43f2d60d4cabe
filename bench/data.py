"""The data and model every training/serving section shares: the PTB subset (or a synthetic stand-in) converted
as the PTB pipelines do it (250 Hz, 10-s windows, 12 leads), and the seed CNN on 2.5-s crops, batch 32."""

from __future__ import annotations

import dataclasses
import functools
import shutil

from bench import timing

WORKSPACE = timing.REPO / "workspace" / "bench"
SAMPLE_RATE = 250
INPUT_SAMPLES = 625  # 2.5 s, as pipelines/ptb_*.flags
BATCH = 32


@dataclasses.dataclass(frozen=True)
class Data:
    data_dir: str
    manifest: object  # ecg_tfx.core.manifest.Manifest (imported lazily, like everything of ecg_tfx here)
    note: str


def converted() -> Data:
    """Converts (once; later calls reuse the finished conversion) with a patient-wise 70/15/15 split."""
    from absl import logging

    from ecg_tfx.data import conversion

    logging.set_verbosity(logging.ERROR)
    ptb = timing.SHARED_DATA / "ptbdb"
    if (ptb / "RECORDS").is_file():
        config = conversion.ConversionConfig(source="ptb", input_dir=str(ptb), labels="mi_vs_healthy",
                                             leads="standard12", sample_rate=SAMPLE_RATE, split="0.7,0.15,0.15")
        note, name = f"real PTB subset, MI vs healthy ({ptb})", "ptb"
    else:
        config = conversion.ConversionConfig(source="synthetic", leads="standard12", sample_rate=SAMPLE_RATE,
                                             split="0.7,0.15,0.15", synthetic_patients=40,
                                             synthetic_records_per_patient=1)
        note, name = f"SYNTHETIC: {ptb} is absent", "synthetic"
    data_dir = str(WORKSPACE / f"tfrecords_{name}")
    with timing.quiet():
        manifest = conversion.run(config, data_dir, overwrite=True)
    examples = {split: manifest.splits[split].examples for split in ("train", "validation", "test")}
    return Data(data_dir, manifest, f"{note}: {examples} windows of {manifest.window_samples} samples")


def spec(manifest):
    """The ModelSpec of the seed CNN on 2.5-s crops with the default 0.5-Hz high-pass."""
    return manifest.model_spec("cnn", input_seconds=INPUT_SAMPLES / SAMPLE_RATE)


def compiled_cnn(model_spec):
    """The seed CNN compiled by the trainer (Adam at 1e-3, cross-entropy, accuracy and AUC), under the global policy."""
    from ecg_tfx.training.config import TrainConfig
    from ecg_tfx.training.trainer import compile_model

    return compile_model(TrainConfig(data_dir="", run_dir=""), model_spec, train_steps=1)


def train_dataset(data: Data, model_spec, repeat: bool = True):
    """The trainer's training dataset: cached preprocessed windows, shuffled, cropped and scaled per batch."""
    from ecg_tfx.data import input_pipeline
    from ecg_tfx.training.config import TrainConfig

    augmentation = TrainConfig(data_dir="", run_dir="").augment_config(model_spec)
    return input_pipeline.make_dataset(data.data_dir, data.manifest, "train", model_spec, BATCH, training=True,
                                       augmentation=augmentation, drop_remainder=True, repeat=repeat)


def in_memory(data: Data, model_spec, batches: int):
    """`batches` batches of the pipeline's output as numpy arrays, and a cached dataset over them."""
    import numpy as np
    import tensorflow as tf

    pulled = list(train_dataset(data, model_spec).take(batches).as_numpy_iterator())
    signals = np.concatenate([x for x, _ in pulled])
    targets = np.concatenate([y for _, y in pulled])
    dataset = tf.data.Dataset.from_tensor_slices((signals, targets)).cache().repeat()
    return signals, targets, dataset.batch(BATCH, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def seconds_per_step(model, dataset, steps: int) -> float:
    """Mean training-step time of one `fit` over `steps` + 1 steps, from the first step's end to the last's
    (so `fit`'s set-up and the first step are left out)."""
    import time

    import keras

    ends: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    model.fit(dataset, epochs=1, steps_per_epoch=steps + 1, verbose=0, callbacks=[Stamp()])
    return (ends[-1] - ends[0]) / steps


@functools.lru_cache(maxsize=1)
def exported() -> tuple[str, str]:
    """A fresh SavedModel export of the CNN trained for a few steps, for the serving section; (version dir, run dir).
    (The export section measures the demo's trained model instead, TFLite variants included.)"""
    from ecg_tfx.core.run_folder import RunFolder
    from ecg_tfx.serving.exporter import export_run

    dataset = converted()
    model_spec = spec(dataset.manifest)
    model = compiled_cnn(model_spec)
    with timing.quiet():
        model.fit(train_dataset(dataset, model_spec), epochs=1, steps_per_epoch=16, verbose=0)
    run_dir, export_dir = WORKSPACE / "run", WORKSPACE / "export"
    for folder in (run_dir, export_dir):
        shutil.rmtree(folder, ignore_errors=True)
    run_dir.mkdir(parents=True)
    model.save(RunFolder(str(run_dir)).model)
    model_spec.save(str(run_dir))
    with timing.quiet():
        version = export_run(str(run_dir), str(export_dir), "ecg", version=1, data_dir=dataset.data_dir)
    return version, str(run_dir)

"""Trains a model on converted TFRecords, evaluates it and exports it.

    python -m ecg_tfx.train --flagfile=pipelines/synthetic_quick.flags
    python -m ecg_tfx.train --data_dir=workspace/tfrecords/ptb --run_dir=workspace/runs/ptb_cnn --model=cnn

A pipeline flagfile may also carry the conversion flags with --convert: the data is then converted first
(a finished conversion with the same flags is reused, an interrupted one resumes). Flags given on the
command line override the flagfile.
"""

from __future__ import annotations

import json
import platform
import sys
import time

import keras
import tensorflow as tf
from absl import app, flags, logging

from ecg_tfx.core import storage
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.data import conversion, conversion_flags, input_pipeline
from ecg_tfx.data.sources import SourceError
from ecg_tfx.dsp.augment import AugmentConfig
from ecg_tfx.dsp.preprocessing import PreprocessConfig
from ecg_tfx.evaluation import evaluate as evaluation
from ecg_tfx.evaluation import plots
from ecg_tfx.models import MODELS, build_model
from ecg_tfx.serving import saved_model as export_lib
from ecg_tfx.training import distribute
from ecg_tfx.training.callbacks import BestCheckpoint, CSVLogger

# Data and run folders.
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFRecord shards + manifest.json (local, gs:// or s3://).")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Where the run's model, logs, plots and metrics go.")
_CONVERT = flags.DEFINE_bool("convert", False, "Convert into --data_dir first, with the conversion flags.")
# Model and optimization.
_MODEL = flags.DEFINE_enum("model", "cnn", sorted(MODELS), "Architecture.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Maximum epochs.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch size (split over replicas).", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.", lower_bound=0.0)
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", "plateau", ["plateau", "one_cycle"],
    "plateau: constant, halved when the monitored metric stalls; one_cycle: warm up from lr/25 over the first "
    "30% of the steps, then cosine decay (fastai's fit_one_cycle, as in the PTB-XL benchmark).")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (AdamW); 0 = Adam.", lower_bound=0.0)
_DROPOUT = flags.DEFINE_float("dropout", None, "Dropout rate; default: the architecture's own.")
_CLASS_WEIGHTS = flags.DEFINE_bool("class_weights", True, "Weight examples by inverse class frequency.")
_MONITOR = flags.DEFINE_string("monitor", "val_auc", "Validation metric for early stopping and the best model.")
_PATIENCE = flags.DEFINE_integer("patience", 10, "Epochs without improvement before stopping.", lower_bound=1)
_WARMUP_EPOCHS = flags.DEFINE_integer(
    "warmup_epochs", 3, "Epochs before the best model may be chosen (a noisy early epoch is not kept).",
    lower_bound=0)
_LR_PATIENCE = flags.DEFINE_integer("lr_patience", 4, "Epochs without improvement before the LR is cut.",
                                    lower_bound=1)
# Windows and preprocessing (the same in serving).
_INPUT_SECONDS = flags.DEFINE_float("input_seconds", 0.0, "Model input length; 0 = the stored window. Training "
                                    "takes random crops of it, evaluation averages sliding ones.", lower_bound=0.0)
_EVAL_STRIDE_SECONDS = flags.DEFINE_float("eval_stride_seconds", 1.0, "Step of the sliding test-time inputs.",
                                          lower_bound=0.01)
_HIGHPASS_HZ = flags.DEFINE_float("highpass_hz", 0.5, "Baseline-removal high-pass; 0 = off.", lower_bound=0.0)
_LOWPASS_HZ = flags.DEFINE_float("lowpass_hz", 0.0, "Low-pass cut-off; 0 = off.", lower_bound=0.0)
_POWERLINE_HZ = flags.DEFINE_float("powerline_hz", 0.0, "Power-line notch (50 or 60); 0 = off.", lower_bound=0.0)
# Augmentation (training only; amplitudes in standardized units).
_SCALE_RANGE = flags.DEFINE_list("scale_range", ["0.9", "1.1"], "Random gain range low,high; empty = off.")
_NOISE_STD = flags.DEFINE_float("noise_std", 0.0, "Gaussian noise std.", lower_bound=0.0)
_WANDER_AMPLITUDE = flags.DEFINE_float("wander_amplitude", 0.0, "Low-frequency wander amplitude.", lower_bound=0.0)
_MAX_SHIFT_SECONDS = flags.DEFINE_float("max_shift_seconds", 0.0, "Random time shift.", lower_bound=0.0)
_LEAD_DROPOUT = flags.DEFINE_float("lead_dropout", 0.0, "Probability of zeroing each lead.", lower_bound=0.0,
                                   upper_bound=0.99)
# Performance and distribution.
_STRATEGY = flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES, "tf.distribute strategy.")
_PRECISION = flags.DEFINE_enum("precision", "auto", distribute.PRECISIONS, "Mixed-precision policy.")
_VIRTUAL_CPUS = flags.DEFINE_integer("virtual_cpus", 0, "Split the CPU into N logical devices (to run mirrored "
                                     "training without accelerators); 0 = off.", lower_bound=0)
_CACHE = flags.DEFINE_string("cache", "memory", "Cache preprocessed windows: memory, a file prefix, or '' (off).")
# Export.
_EXPORT = flags.DEFINE_bool("export", True, "Export a SavedModel for TF Serving at the end.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", "", "Where to export; default <run_dir>/export.")
_MODEL_NAME = flags.DEFINE_string("model_name", "ecg", "Model name in the export path (TF Serving's model name).")
_TFLITE = flags.DEFINE_bool("tflite", False, "Also export TFLite float32 and int8 models.")

flags.mark_flags_as_required(["data_dir", "run_dir"])
flags.register_validator("scale_range", lambda v: not v or (len(v) == 2 and 0 < float(v[0]) <= float(v[1])),
                         "--scale_range takes two gains low,high with 0 < low <= high, or nothing")
flags.register_multi_flags_validator(
    ["input_seconds", "window_seconds", "convert"],
    lambda f: not f["convert"] or f["input_seconds"] <= f["window_seconds"],
    "--input_seconds cannot exceed the stored --window_seconds")


def model_spec(manifest: dict) -> ModelSpec:
    """The spec of the model these flags train on this data."""
    rate = manifest["sample_rate_hz"]
    window = manifest["window_samples"]
    input_samples = round(_INPUT_SECONDS.value * rate) or window
    if input_samples > window:
        raise app.UsageError(f"--input_seconds={_INPUT_SECONDS.value} exceeds the stored window ({window / rate} s)")
    return ModelSpec(
        model=_MODEL.value, labels=tuple(manifest["labels"]), multi_label=manifest["multi_label"],
        leads=tuple(manifest["leads"]), sample_rate_hz=rate, window_samples=window,
        stride_samples=manifest["stride_samples"], input_samples=input_samples,
        eval_stride_samples=max(1, round(_EVAL_STRIDE_SECONDS.value * rate)),
        preprocessing=PreprocessConfig(rate, _HIGHPASS_HZ.value or None, _LOWPASS_HZ.value or None,
                                       _POWERLINE_HZ.value or None))


def augment_config(spec: ModelSpec) -> AugmentConfig:
    return AugmentConfig(
        crop_samples=spec.input_samples if spec.input_samples < spec.window_samples else None,
        max_shift_samples=round(_MAX_SHIFT_SECONDS.value * spec.sample_rate_hz),
        scale_range=tuple(float(v) for v in _SCALE_RANGE.value) if _SCALE_RANGE.value else None,
        noise_std=_NOISE_STD.value, wander_amplitude=_WANDER_AMPLITUDE.value, lead_dropout=_LEAD_DROPOUT.value,
        sample_rate_hz=spec.sample_rate_hz)


def callbacks(work_dir: str) -> list[keras.callbacks.Callback]:
    """Early stopping, LR schedule, best checkpoint, backup (resume after a kill), TensorBoard, CSV log.

    `work_dir` is the run folder on the chief; other multi-worker workers get their own, removed at the end.
    """
    mode = "min" if "loss" in _MONITOR.value else "max"
    warmup = min(_WARMUP_EPOCHS.value, _EPOCHS.value - 1)
    backup_dir = storage.join(work_dir, "backup")
    resuming = tf.io.gfile.exists(backup_dir)  # a fresh run starts a fresh history
    plateau = [keras.callbacks.ReduceLROnPlateau(_MONITOR.value, mode=mode, factor=0.5, patience=_LR_PATIENCE.value,
                                                 min_lr=1e-6)] if _LR_SCHEDULE.value == "plateau" else []
    return plateau + [
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.EarlyStopping(_MONITOR.value, mode=mode, patience=_PATIENCE.value,
                                      restore_best_weights=True, start_from_epoch=warmup),
        BestCheckpoint(storage.join(work_dir, "best.keras"), monitor=_MONITOR.value, mode=mode,
                       save_best_only=True, start_from_epoch=warmup),
        keras.callbacks.TensorBoard(storage.join(work_dir, "logs")),
        CSVLogger(storage.join(work_dir, "history.csv"), append=resuming),
    ]


def optimizer(train_steps: int) -> keras.optimizers.Optimizer:
    """Adam, or AdamW with --weight_decay; the learning rate follows --lr_schedule over `train_steps` in all."""
    rate = _LEARNING_RATE.value
    if _LR_SCHEDULE.value == "one_cycle":
        warmup = int(0.3 * train_steps)
        rate = keras.optimizers.schedules.CosineDecay(rate / 25, max(1, train_steps - warmup), alpha=1e-4,
                                                      warmup_target=rate, warmup_steps=warmup)
    if _WEIGHT_DECAY.value:
        return keras.optimizers.AdamW(rate, weight_decay=_WEIGHT_DECAY.value)
    return keras.optimizers.Adam(rate)


def compile_model(spec: ModelSpec, train_steps: int) -> keras.Model:
    model = build_model(spec.model, len(spec.leads), len(spec.labels), spec.multi_label, spec.sample_rate_hz,
                        spec.input_samples, _DROPOUT.value)
    if spec.multi_label:
        loss, accuracy = "binary_crossentropy", keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss, accuracy = "categorical_crossentropy", keras.metrics.CategoricalAccuracy(name="accuracy")
    auc = keras.metrics.AUC(name="auc", multi_label=spec.multi_label,
                            num_labels=len(spec.labels) if spec.multi_label else None)
    model.compile(optimizer(train_steps), loss, metrics=[accuracy, auc])
    return model


def datasets(manifest: dict, spec: ModelSpec, strategy: tf.distribute.Strategy) -> tuple[tf.data.Dataset, ...]:
    """Training and validation datasets; each worker reads its own files (or examples) under multi-worker."""
    weights = input_pipeline.class_weights(manifest, spec.labels) if _CLASS_WEIGHTS.value else None
    common = dict(data_dir=_DATA_DIR.value, manifest=manifest, spec=spec, batch_size=_BATCH_SIZE.value,
                  repeat=True)
    train = input_pipeline.make_dataset(split="train", training=True, augmentation=augment_config(spec),
                                        cache=_CACHE.value, seed=conversion_flags.SEED.value, weights=weights,
                                        drop_remainder=strategy.num_replicas_in_sync > 1, **common)
    validation = input_pipeline.make_dataset(split="validation", training=False, cache=_CACHE.value and "memory",
                                             **common)
    return train.with_options(shard_options("train", manifest, strategy)), validation.with_options(
        shard_options("validation", manifest, strategy))


def shard_options(split: str, manifest: dict, strategy: tf.distribute.Strategy) -> tf.data.Options:
    """How multi-worker training splits a dataset between workers: by file when each worker gets one.

    The training pipeline also draws a range (augmentation seeds per step), which FILE sharding cannot
    split, so training is sharded by data: each worker reads every file and keeps its share of the batches.
    """
    enough_files = len(manifest["splits"][split]["shards"]) >= distribute.num_workers(strategy)
    policy = tf.data.experimental.AutoShardPolicy
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        policy.FILE if enough_files and split != "train" else policy.DATA)
    return options


def write_run_files(run_dir: str, spec: ModelSpec, info: dict) -> None:
    spec.save(run_dir)
    storage.write_json(storage.join(run_dir, "labels.json"), {"labels": list(spec.labels),
                                                              "multi_label": spec.multi_label})
    storage.write_bytes(storage.join(run_dir, "flags.txt"), flags.FLAGS.flags_into_string().encode())
    storage.write_json(storage.join(run_dir, "run_info.json"), info)


def train(run_dir: str) -> dict:
    """Trains, evaluates on validation and test, exports; returns the run info."""
    if _VIRTUAL_CPUS.value:
        distribute.split_cpu(_VIRTUAL_CPUS.value)
    manifest = input_pipeline.load_manifest(_DATA_DIR.value)
    precision, reason = distribute.set_precision(_PRECISION.value)
    strategy = distribute.make_strategy(_STRATEGY.value)
    chief = distribute.is_chief(strategy)
    work_dir = run_dir if chief else storage.join(run_dir, ".workers", str(strategy.cluster_resolver.task_id))
    tf.io.gfile.makedirs(work_dir)
    keras.utils.set_random_seed(conversion_flags.SEED.value)
    spec = model_spec(manifest)
    info = {"precision": precision, "precision_reason": reason, "strategy": type(strategy).__name__,
            "replicas": strategy.num_replicas_in_sync, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "data_dir": _DATA_DIR.value, "model": spec.model}
    logging.info("training %s: %s on %d replica(s), precision %s (%s)", spec.model, info["strategy"],
                 info["replicas"], precision, reason)
    train_data, validation_data = datasets(manifest, spec, strategy)
    steps = {split: input_pipeline.batches_per_epoch(manifest, split, spec, _BATCH_SIZE.value, split == "train",
                                                     split == "train" and strategy.num_replicas_in_sync > 1)
             for split in ("train", "validation")}
    with strategy.scope():
        model = compile_model(spec, steps["train"] * _EPOCHS.value)
    info["parameters"] = model.count_params()
    if chief:
        write_run_files(run_dir, spec, info)
    started = time.time()
    history = model.fit(train_data, validation_data=validation_data, epochs=_EPOCHS.value, shuffle=False,
                        steps_per_epoch=steps["train"], validation_steps=steps["validation"],
                        callbacks=callbacks(work_dir), verbose=1 if sys.stdout.isatty() else 2)
    info["train_seconds"] = round(time.time() - started, 1)
    info["epochs_run"] = len(history.epoch)
    if not chief:  # leaves nothing in the run folder
        tf.io.gfile.rmtree(work_dir)
        try:
            if not tf.io.gfile.listdir(storage.join(run_dir, ".workers")):
                tf.io.gfile.rmtree(storage.join(run_dir, ".workers"))
        except tf.errors.NotFoundError:  # another worker removed it first (or the store has no folders)
            pass
        return info
    model.save(storage.join(run_dir, "model.keras"))  # the best weights (EarlyStopping restores them)
    if not tf.io.gfile.exists(storage.join(run_dir, "best.keras")):
        model.save(storage.join(run_dir, "best.keras"))
    return finish(run_dir, model, spec, manifest, info)


def finish(run_dir: str, model: keras.Model, spec: ModelSpec, manifest: dict, info: dict) -> dict:
    """Plots, evaluation on validation and test, and the export: everything after fit, chief only."""
    plots.save_training_history(storage.join(run_dir, "history.csv"), storage.join(run_dir, "training_history.png"))
    for split in ("validation", "test"):
        out_dir = evaluation.default_out_dir(run_dir, split, "final")
        info[f"{split}_metrics"] = evaluation.evaluate(model, spec, _DATA_DIR.value, manifest, split, out_dir)
    if _EXPORT.value:
        info["export"] = export_lib.export_run(run_dir, _EXPORT_DIR.value or storage.join(run_dir, "export"),
                                           _MODEL_NAME.value, tflite=_TFLITE.value, data_dir=_DATA_DIR.value)
    storage.write_json(storage.join(run_dir, "run_info.json"), info)
    return info


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if _CONVERT.value:
            conversion.run(conversion_flags.config_from_flags(), _DATA_DIR.value,
                           conversion_flags.NUM_WORKERS.value, conversion_flags.OVERWRITE.value)
        info = train(_RUN_DIR.value)
    except (SourceError, conversion.ConversionError, FileNotFoundError, ValueError) as error:
        logging.error("%s", error)
        sys.exit(f"error: {error}")
    summary = {split: {k: v for k, v in info.get(f"{split}_metrics", {}).get("record", {}).items()
                       if isinstance(v, float)} for split in ("validation", "test")}
    print(json.dumps({"run_dir": _RUN_DIR.value, "precision": info["precision"], **summary}, indent=1))


if __name__ == "__main__":
    storage.run_app(main)

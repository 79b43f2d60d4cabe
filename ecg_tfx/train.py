"""Trains a model on converted TFRecords, evaluates it and exports it.

    python -m ecg_tfx.train --flagfile=pipelines/synthetic_quick.flags
    python -m ecg_tfx.train --data_dir=workspace/tfrecords/ptb --run_dir=workspace/runs/ptb_cnn --model=cnn

A pipeline flagfile may also carry the conversion flags with --convert: the data is then converted first
(a finished conversion with the same flags is reused, an interrupted one resumes). Flags given on the
command line override the flagfile.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from ecg_tfx.core import storage
from ecg_tfx.data import conversion, conversion_flags
from ecg_tfx.data.sources import SourceError
from ecg_tfx.models import MODELS
from ecg_tfx.serving.tflite import REPORT_FILE, summary_lines
from ecg_tfx.serving.tflite_flags import TFLITE_VARIANTS
from ecg_tfx.training import distribute
from ecg_tfx.training.config import LR_SCHEDULES, TrainConfig
from ecg_tfx.training.trainer import train

_DEFAULTS = TrainConfig(data_dir="", run_dir="")

# Data and run folders.
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFRecord shards + manifest.json (local, gs:// or s3://).")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Where the run's model, logs, plots and metrics go.")
_CONVERT = flags.DEFINE_bool("convert", False, "Convert into --data_dir first, with the conversion flags.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Training seed (initialization, shuffling, augmentation); the "
                             "conversion's split has its own --split_seed.")
# Model and optimization.
_MODEL = flags.DEFINE_enum("model", _DEFAULTS.model, sorted(MODELS), "Architecture.")
_EPOCHS = flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Maximum epochs.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size (split over replicas).",
                                   lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Peak learning rate.",
                                    lower_bound=0.0)
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", _DEFAULTS.lr_schedule, LR_SCHEDULES,
    "plateau: constant, halved when the monitored metric stalls; one_cycle: warm up from lr/25 over the first "
    "30% of the steps, then cosine decay (fastai's fit_one_cycle, as in the PTB-XL benchmark).")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay,
                                   "Decoupled weight decay (AdamW); 0 = Adam.", lower_bound=0.0)
_DROPOUT = flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout rate; default: the architecture's own.")
_CLASS_WEIGHTS = flags.DEFINE_bool("class_weights", _DEFAULTS.class_weights,
                                   "Weight examples by inverse class frequency.")
_MONITOR = flags.DEFINE_string("monitor", _DEFAULTS.monitor,
                               "Validation metric for early stopping and the best model.")
_PATIENCE = flags.DEFINE_integer("patience", _DEFAULTS.patience, "Epochs without improvement before stopping.",
                                 lower_bound=1)
_WARMUP_EPOCHS = flags.DEFINE_integer(
    "warmup_epochs", _DEFAULTS.warmup_epochs,
    "Epochs before the best model may be chosen (a noisy early epoch is not kept).", lower_bound=0)
_LR_PATIENCE = flags.DEFINE_integer("lr_patience", _DEFAULTS.lr_patience,
                                    "Epochs without improvement before the LR is cut.", lower_bound=1)
# Warm start from a pretrained run.
_INIT_FROM = flags.DEFINE_string(
    "init_from", _DEFAULTS.init_from, "Start from this finished run's model.keras (same --model, leads, sample rate "
    "and input length). Same classes: every weight is copied; other classes: the body is, and a new head is built.")
_FREEZE_EPOCHS = flags.DEFINE_integer("freeze_epochs", _DEFAULTS.freeze_epochs,
                                      "With --init_from: the body is frozen for the first N epochs.", lower_bound=0)
_BODY_LR_FACTOR = flags.DEFINE_float("body_lr_factor", _DEFAULTS.body_lr_factor,
                                     "With --init_from: the body learns at this fraction of the learning rate (and "
                                     "schedule); the head at the full rate.", lower_bound=0.0)
# Windows and preprocessing (the same in serving).
_INPUT_SECONDS = flags.DEFINE_float(
    "input_seconds", _DEFAULTS.input_seconds, "Model input length; 0 = the stored window. Training takes random "
    "crops of it, evaluation averages sliding ones.", lower_bound=0.0)
_EVAL_STRIDE_SECONDS = flags.DEFINE_float("eval_stride_seconds", _DEFAULTS.eval_stride_seconds,
                                          "Step of the sliding test-time inputs.", lower_bound=0.01)
_HIGHPASS_HZ = flags.DEFINE_float("highpass_hz", _DEFAULTS.highpass_hz, "Baseline-removal high-pass; 0 = off.",
                                  lower_bound=0.0)
_LOWPASS_HZ = flags.DEFINE_float("lowpass_hz", _DEFAULTS.lowpass_hz, "Low-pass cut-off; 0 = off.", lower_bound=0.0)
_POWERLINE_HZ = flags.DEFINE_float("powerline_hz", _DEFAULTS.powerline_hz, "Power-line notch (50 or 60); 0 = off.",
                                   lower_bound=0.0)
# Augmentation (training only; amplitudes in standardized units).
_SCALE_RANGE = flags.DEFINE_list("scale_range", [str(v) for v in _DEFAULTS.scale_range],
                                 "Random gain range low,high; empty = off.")
_NOISE_STD = flags.DEFINE_float("noise_std", _DEFAULTS.noise_std, "Gaussian noise std.", lower_bound=0.0)
_WANDER_AMPLITUDE = flags.DEFINE_float("wander_amplitude", _DEFAULTS.wander_amplitude,
                                       "Low-frequency wander amplitude.", lower_bound=0.0)
_MAX_SHIFT_SECONDS = flags.DEFINE_float("max_shift_seconds", _DEFAULTS.max_shift_seconds, "Random time shift.",
                                        lower_bound=0.0)
_LEAD_DROPOUT = flags.DEFINE_float("lead_dropout", _DEFAULTS.lead_dropout, "Probability of zeroing each lead.",
                                   lower_bound=0.0, upper_bound=0.99)
# Performance and distribution.
_STRATEGY = flags.DEFINE_enum("strategy", _DEFAULTS.strategy, distribute.STRATEGIES, "tf.distribute strategy.")
_PRECISION = flags.DEFINE_enum("precision", _DEFAULTS.precision, distribute.PRECISIONS, "Mixed-precision policy.")
_VIRTUAL_CPUS = flags.DEFINE_integer("virtual_cpus", _DEFAULTS.virtual_cpus, "Split the CPU into N logical devices "
                                     "(to run mirrored training without accelerators); 0 = off.", lower_bound=0)
_CACHE = flags.DEFINE_string("cache", _DEFAULTS.cache,
                             "Cache preprocessed windows: memory, a file prefix, or '' (off).")
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", _DEFAULTS.deterministic, "Deterministic TensorFlow ops (tf.config.experimental."
    "enable_op_determinism): a rerun, or a killed run resumed, gives the same weights bit for bit.")
# Export.
_EXPORT = flags.DEFINE_bool("export", _DEFAULTS.export, "Export a SavedModel for TF Serving at the end.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", _DEFAULTS.export_dir, "Where to export; default <run_dir>/export.")
_MODEL_NAME = flags.DEFINE_string("model_name", _DEFAULTS.model_name,
                                  "Model name in the export path (TF Serving's model name).")
_TFLITE = flags.DEFINE_bool("tflite", _DEFAULTS.tflite, "Also export the TFLite variants (float32, float16, "
                            "dynamic_range, int8, int8_body, int16x8) and print their size, latency, agreement and "
                            "verdict; agreement is measured on the test split (see `ecg_tfx.export --tflite`).")

flags.mark_flags_as_required(["data_dir", "run_dir"])
flags.register_validator("scale_range", lambda v: not v or (len(v) == 2 and 0 < float(v[0]) <= float(v[1])),
                         "--scale_range takes two gains low,high with 0 < low <= high, or nothing")
flags.register_multi_flags_validator(
    ["input_seconds", "window_seconds", "convert"],
    lambda f: not f["convert"] or f["input_seconds"] <= f["window_seconds"],
    "--input_seconds cannot exceed the stored --window_seconds")


def config_from_flags() -> TrainConfig:
    return TrainConfig(
        data_dir=_DATA_DIR.value, run_dir=_RUN_DIR.value, model=_MODEL.value, epochs=_EPOCHS.value,
        batch_size=_BATCH_SIZE.value, learning_rate=_LEARNING_RATE.value, lr_schedule=_LR_SCHEDULE.value,
        weight_decay=_WEIGHT_DECAY.value, dropout=_DROPOUT.value, class_weights=_CLASS_WEIGHTS.value,
        monitor=_MONITOR.value, patience=_PATIENCE.value, warmup_epochs=_WARMUP_EPOCHS.value,
        lr_patience=_LR_PATIENCE.value, seed=_SEED.value, init_from=_INIT_FROM.value,
        freeze_epochs=_FREEZE_EPOCHS.value, body_lr_factor=_BODY_LR_FACTOR.value, input_seconds=_INPUT_SECONDS.value,
        eval_stride_seconds=_EVAL_STRIDE_SECONDS.value, highpass_hz=_HIGHPASS_HZ.value, lowpass_hz=_LOWPASS_HZ.value,
        powerline_hz=_POWERLINE_HZ.value,
        scale_range=tuple(float(v) for v in _SCALE_RANGE.value) if _SCALE_RANGE.value else None,
        noise_std=_NOISE_STD.value, wander_amplitude=_WANDER_AMPLITUDE.value,
        max_shift_seconds=_MAX_SHIFT_SECONDS.value, lead_dropout=_LEAD_DROPOUT.value, strategy=_STRATEGY.value,
        precision=_PRECISION.value, virtual_cpus=_VIRTUAL_CPUS.value, cache=_CACHE.value,
        deterministic=_DETERMINISTIC.value, export=_EXPORT.value, export_dir=_EXPORT_DIR.value,
        model_name=_MODEL_NAME.value, tflite=_TFLITE.value,
        tflite_variants=tuple(TFLITE_VARIANTS.value))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if _CONVERT.value:
            manifest = conversion.run(conversion_flags.config_from_flags(), _DATA_DIR.value,
                                      conversion_flags.NUM_WORKERS.value, conversion_flags.OVERWRITE.value)
            print(conversion.summary(manifest), flush=True)
        info = train(config_from_flags(), flags.FLAGS.flags_into_string())
    except (SourceError, conversion.ConversionError, FileNotFoundError, ValueError) as error:
        logging.error("%s", error)
        sys.exit(f"error: {error}")
    summary = {split: {k: v for k, v in info.get(f"{split}_metrics", {}).get("record", {}).items()
                       if isinstance(v, float)} for split in ("validation", "test")}
    print(json.dumps({"run_dir": _RUN_DIR.value, "precision": info["precision"], **summary}, indent=1))
    if _TFLITE.value and "export" in info:
        print("\n".join(summary_lines(storage.read_json(storage.join(info["export"], REPORT_FILE)))))


if __name__ == "__main__":
    storage.run_app(main)

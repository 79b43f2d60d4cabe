"""Conversion flags, defined once and shared by `convert` and `train` (which can convert before training)."""

from __future__ import annotations

import os

from absl import flags

from ecg_tfx.core import labels
from ecg_tfx.data import conversion

_DEFAULTS = conversion.ConversionConfig()

_SOURCE = flags.DEFINE_enum("source", _DEFAULTS.source, ["synthetic", "ptb", "ptbxl"], "Where records come from.")
_INPUT_DIR = flags.DEFINE_string("input_dir", "", "Database folder (PhysioNet layout) for ptb and ptbxl.")
_LABELS = flags.DEFINE_string("labels", "", f"Label preset; default per source {labels.DEFAULT_PRESET}.")
_MIN_CLASS_RECORDS = flags.DEFINE_integer("min_class_records", 0, "Fold out classes with fewer records.", lower_bound=0)
_SAMPLE_RATE = flags.DEFINE_integer("sample_rate", _DEFAULTS.sample_rate, "Output rate in Hz.", lower_bound=1)
_LEADS = flags.DEFINE_string("leads", _DEFAULTS.leads, "Comma-separated lead names, standard12, all, or auto.")
_WINDOW_SECONDS = flags.DEFINE_float("window_seconds", _DEFAULTS.window_seconds, "Window length.", lower_bound=0.1)
_WINDOW_STRIDE_SECONDS = flags.DEFINE_float("window_stride_seconds", 0.0, "Window step; 0 = the window length.",
                                            lower_bound=0.0)
_SHORT_RECORDS = flags.DEFINE_enum("short_records", _DEFAULTS.short_records, ["pad", "skip"],
                                   "What to do with a record shorter than one window.")
_SPLIT = flags.DEFINE_string("split", _DEFAULTS.split, "train,validation,test fractions (patient-wise).")
_SPLIT_BY = flags.DEFINE_enum("split_by", _DEFAULTS.split_by, ["auto", "folds", "patients"],
                              "auto: the dataset's own folds if it has them (PTB-XL strat_fold), else by patient.")
_SPLIT_SEED = flags.DEFINE_integer(
    "split_seed", _DEFAULTS.split_seed, "Seed of the patient-wise split and of the synthetic generator (part of the "
    "conversion's identity); not the training seed (train --seed), so one conversion serves every training seed.")
_PTBXL_RESOLUTION = flags.DEFINE_enum("ptbxl_resolution", "500", ["500", "100"], "PTB-XL records500 or records100.")
_SYNTHETIC_PATIENTS = flags.DEFINE_integer("synthetic_patients", _DEFAULTS.synthetic_patients,
                                           "Synthetic patients (conditions round-robin).", lower_bound=1)
_SYNTHETIC_RECORDS = flags.DEFINE_integer("synthetic_records_per_patient", _DEFAULTS.synthetic_records_per_patient,
                                          "Synthetic records per patient.", lower_bound=1)
_SYNTHETIC_DURATION = flags.DEFINE_float("synthetic_duration_s", _DEFAULTS.synthetic_duration_s,
                                         "Length of each synthetic record.", lower_bound=1)
_SYNTHETIC_RATE = flags.DEFINE_float("synthetic_sample_rate", _DEFAULTS.synthetic_sample_rate,
                                     "Rate the synthetic records are generated at (then resampled).", lower_bound=100)
_MAX_RECORDS = flags.DEFINE_integer("max_records", 0, "Convert only the first N records (0 = all).", lower_bound=0)
_COMPRESSION = flags.DEFINE_enum("compression", "NONE", ["NONE", "GZIP"], "TFRecord compression.")
_SHARD_SIZE_MB = flags.DEFINE_float("shard_size_mb", _DEFAULTS.shard_size_mb, "Target shard size (uncompressed).",
                                    lower_bound=0.001)
NUM_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Worker processes.", lower_bound=1)
_MAX_FAILURE_FRACTION = flags.DEFINE_float(
    "max_failure_fraction", _DEFAULTS.max_failure_fraction,
    "Stop (no manifest) once more than this fraction of the listed records failed to read or gave no window. "
    "0.05: an intact PhysioNet copy reads whole (0 of the 66 PTB and 400 PTB-XL records here fail), so a few "
    "broken files pass with each one reported, while a wrong folder, a half-finished download or an unsupported "
    "format (most records fail) stops the run instead of silently training on a changed class balance.",
    lower_bound=0.0, upper_bound=1.0)
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing conversion made with other flags.")

flags.register_validator("split", lambda text: _valid_split(text), "--split: see the message above")
flags.register_multi_flags_validator(
    ["source", "input_dir"], lambda f: f["source"] == "synthetic" or bool(f["input_dir"]),
    "--input_dir is required for --source=ptb and --source=ptbxl")
flags.register_multi_flags_validator(
    ["source", "labels"], lambda f: not f["labels"] or (f["source"], f["labels"]) in labels.PRESETS,
    f"--labels must be a preset of the chosen source: {sorted((p.source, p.name) for p in labels.PRESETS.values())}")


def _valid_split(text: str) -> bool:
    """Checks --split up front (the rule is `splits.parse_fractions`'), with its specific message."""
    try:
        conversion.splits.parse_fractions(text)
    except ValueError as error:
        raise flags.ValidationError(str(error)) from None
    return True


def config_from_flags() -> conversion.ConversionConfig:
    return conversion.ConversionConfig(
        source=_SOURCE.value, input_dir=_INPUT_DIR.value, labels=_LABELS.value,
        min_class_records=_MIN_CLASS_RECORDS.value, sample_rate=_SAMPLE_RATE.value, leads=_LEADS.value,
        window_seconds=_WINDOW_SECONDS.value, window_stride_seconds=_WINDOW_STRIDE_SECONDS.value,
        short_records=_SHORT_RECORDS.value, split=_SPLIT.value, split_by=_SPLIT_BY.value, split_seed=_SPLIT_SEED.value,
        ptbxl_resolution=int(_PTBXL_RESOLUTION.value), synthetic_patients=_SYNTHETIC_PATIENTS.value,
        synthetic_records_per_patient=_SYNTHETIC_RECORDS.value, synthetic_duration_s=_SYNTHETIC_DURATION.value,
        synthetic_sample_rate=_SYNTHETIC_RATE.value, max_records=_MAX_RECORDS.value,
        compression=_COMPRESSION.value, shard_size_mb=_SHARD_SIZE_MB.value,
        max_failure_fraction=_MAX_FAILURE_FRACTION.value)

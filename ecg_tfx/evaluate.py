"""Evaluates a trained model on one split and writes metrics and figures (see `ecg_tfx.evaluation`).

    python -m ecg_tfx.evaluate --run_dir=workspace/runs/ptb --data_dir=workspace/tfrecords/ptb [--split=test]
"""

from __future__ import annotations

import sys

import tensorflow as tf
from absl import app, flags

from ecg_tfx.core import storage
from ecg_tfx.core.manifest import SPLITS, Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.core.run_folder import CHECKPOINTS, RunFolder
from ecg_tfx.evaluation import plots
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.evaluation.evaluate import evaluate, summary

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Training run folder (model.keras, best.keras, model_spec.json).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted TFRecords with manifest.json.")
_SPLIT = flags.DEFINE_enum("split", "test", list(SPLITS), "Split to evaluate.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "final", list(CHECKPOINTS),
                                "final = model.keras (what training evaluated and exported), best = best.keras.")
_OUT_DIR = flags.DEFINE_string("out_dir", "", "Where outputs go; default as train writes them: the run folder for "
                               "test, <run_dir>/<split> otherwise, under <run_dir>/best for --checkpoint=best.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Windows per batch.", lower_bound=1)

flags.mark_flags_as_required(["run_dir", "data_dir"])
for _name in ("run_dir", "data_dir"):
    flags.register_validator(_name, bool, f"--{_name} must not be empty")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import keras  # deferred: flag parsing and --help stay fast

    run = RunFolder(_RUN_DIR.value)
    storage.enable_filesystem(run.path)
    model_path = run.checkpoint(_CHECKPOINT.value)
    if not tf.io.gfile.exists(model_path):
        sys.exit(f"error: {model_path} does not exist (is --run_dir a finished training run?)")
    spec = ModelSpec.load(run.path)
    model = keras.saving.load_model(model_path, compile=False)
    out_dir = _OUT_DIR.value or run.evaluation_dir(_SPLIT.value, _CHECKPOINT.value)
    decision = Decision.load(run.decision) if tf.io.gfile.exists(run.decision) else None  # None: the defaults
    try:
        result = evaluate(model, spec, _DATA_DIR.value, Manifest.load(_DATA_DIR.value), _SPLIT.value, out_dir,
                          _BATCH_SIZE.value, decision)
    except ValueError as error:
        sys.exit(f"error: {error}")
    if tf.io.gfile.exists(run.history):
        plots.save_training_history(run.history, run.history_plot)
    print(summary(result, out_dir))


if __name__ == "__main__":
    storage.run_app(main)

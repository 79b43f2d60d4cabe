"""Evaluates a trained model on one split and writes metrics and figures (see `ecg_tfx.evaluation`).

    python -m ecg_tfx.evaluate --run_dir=workspace/runs/ptb --data_dir=workspace/tfrecords/ptb [--split=test]
    python -m ecg_tfx.evaluate --run_dir=workspace/runs/s0,workspace/runs/s1 --out_dir=workspace/ensembles/s01 ...

Several run folders are scored as their seed ensemble (the mean of their probabilities, as `export` serves it),
with the decision `export --data_dir` fits for it on the validation split (written to <out_dir>/decision.json).

Data of another source than the run trained on is scored zero-shot (the realism score of a run trained on
synthetic ECGs, on real PTB-XL records converted with the same classes, leads, rate and window):

    python -m ecg_tfx.evaluate --run_dir=workspace/runs/synthetic_zero_shot \
        --data_dir=workspace/tfrecords/ptbxl_100hz      # -> <run_dir>/zero_shot_ptbxl_test/
"""

from __future__ import annotations

import sys

from absl import app, flags

from ecg_tfx.core import storage
from ecg_tfx.core.manifest import SPLITS, Manifest
from ecg_tfx.core.run_folder import CHECKPOINTS, RunFolder
from ecg_tfx.evaluation import plots
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.evaluation.evaluate import evaluate, fit_decision, summary, trained_source

_RUN_DIR = flags.DEFINE_list("run_dir", None, "Training run folder (model.keras, best.keras, model_spec.json), "
                             "or a comma-separated list of runs of one task: their seed ensemble (needs --out_dir).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted TFRecords with manifest.json.")
_SPLIT = flags.DEFINE_enum("split", "test", list(SPLITS), "Split to evaluate.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "final", list(CHECKPOINTS),
                                "final = model.keras (what training evaluated and exported), best = best.keras.")
_OUT_DIR = flags.DEFINE_string("out_dir", "", "Where outputs go; default as train writes them: the run folder for "
                               "test, <run_dir>/<split> otherwise, under <run_dir>/best for --checkpoint=best; "
                               "<run_dir>/zero_shot_<source>_<split> for data of another source than the run "
                               "trained on. Required for an ensemble.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Windows per batch.", lower_bound=1)

flags.mark_flags_as_required(["run_dir", "data_dir"])
for _name in ("run_dir", "data_dir"):
    flags.register_validator(_name, bool, f"--{_name} must not be empty")
flags.register_multi_flags_validator(["run_dir", "out_dir"], lambda f: len(f["run_dir"] or []) < 2 or f["out_dir"],
                                     "an ensemble (several --run_dir) needs --out_dir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ecg_tfx.models.ensemble import average, load_runs  # deferred: flag parsing and --help stay fast

    runs = [RunFolder(path) for path in _RUN_DIR.value]
    for run in runs:
        storage.enable_filesystem(run.path)
        if not storage.exists(run.checkpoint(_CHECKPOINT.value)):
            sys.exit(f"error: {run.checkpoint(_CHECKPOINT.value)} does not exist (is --run_dir a finished training "
                     "run?)")
    manifest = Manifest.load(_DATA_DIR.value)
    try:
        members, spec = load_runs(_RUN_DIR.value, _CHECKPOINT.value)
        model = average(members)
        trained_on = trained_source(runs[0])
        trained_on = trained_on if trained_on not in (None, manifest.source) else None  # None: the run's own kind
        out_dir = _OUT_DIR.value or (runs[0].zero_shot_dir(manifest.source, _SPLIT.value, _CHECKPOINT.value)
                                     if trained_on else runs[0].evaluation_dir(_SPLIT.value, _CHECKPOINT.value))
        if len(runs) > 1:  # the decision an ensemble's export fits (its members' do not apply to their mean)
            decision = fit_decision(model, spec, _DATA_DIR.value, manifest, _BATCH_SIZE.value)
        else:
            decision = Decision.load(runs[0].decision) if storage.exists(runs[0].decision) else None  # defaults
        result = evaluate(model, spec, _DATA_DIR.value, manifest, _SPLIT.value, out_dir, _BATCH_SIZE.value, decision,
                          trained_on)
    except ValueError as error:
        sys.exit(f"error: {error}")
    if len(runs) > 1:
        decision.save(storage.join(out_dir, "decision.json"))
        print(f"seed ensemble of {len(runs)} runs: {', '.join(run.path for run in runs)}")
    elif storage.exists(runs[0].history):
        plots.save_training_history(runs[0].history, runs[0].history_plot)
    print(summary(result, out_dir))


if __name__ == "__main__":
    storage.run_app(main)

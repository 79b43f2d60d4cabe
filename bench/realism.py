"""Section 6, realism (issue #17): a model trained on synthetic ECGs only, scored zero-shot on real PTB-XL, against
the same model trained on real PTB-XL.

Side by side in one run, each arm built from its pipeline flagfile as `python -m ecg_tfx.train --flagfile=...` builds
it (`recipe`): the synthetic arm is `pipelines/synthetic_zero_shot.flags` as it stands (a small synthetic
superdiagnostic cohort, trained briefly: its header says why), the real arm `pipelines/ptbxl_superdiagnostic.flags`
(the shared PTB-XL subset at 100 Hz, folds 1-8 train, 9 validation, 10 test) cut to REAL_EPOCHS epochs; both resnet1d
on 2.5-s crops, float32, seed SEED, no export. Both are scored on PTB-XL's fold 10: the real-trained run by its own
test evaluation, the synthetic one zero-shot through the code `python -m ecg_tfx.evaluate` runs (its run loaded by
`load_runs`, its source by `trained_source`, its own decision.json). The realism ratio is the zero-shot macro record
ROC AUC over the real-trained one (the issue's "ratio to the same model trained on real data"); the bootstrap 95% CIs
are evaluate's (1000 resamples of the 53 test records), the ratio's a paired bootstrap of the same resamples over
both runs' record predictions. `quick` changes nothing: fewer epochs would change the figure, not only its noise.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bench import data, timing

if TYPE_CHECKING:
    import numpy as np

    from ecg_tfx.data.conversion import ConversionConfig
    from ecg_tfx.training.config import TrainConfig

FLAGFILES = {"synthetic": "pipelines/synthetic_zero_shot.flags", "real": "pipelines/ptbxl_superdiagnostic.flags"}
REAL_EPOCHS = 10  # the real arm's cut of its recipe's 50 (patience too), to keep `make bench` short
SEED = 0
# The zero-shot target (macro AUC >= 0.80) over what the full recipe reaches on real data (0.837, the mean
# of seeds 0-4 of ptbxl_superdiagnostic, README): a synthetic model meeting the target is at 0.96 of it.
ABSOLUTE_TARGET = 0.80
REAL_FULL_RECIPE_AUC = 0.837
RATIO_TARGET = round(ABSOLUTE_TARGET / REAL_FULL_RECIPE_AUC, 2)


def recipe(name: str) -> tuple[ConversionConfig, TrainConfig]:
    """An arm's conversion and training configs: its flagfile parsed by the `train` command's own flags, with the
    bench's folders, seed, float32 and no export (and the real arm's shared data and epochs)."""
    import os

    from absl import flags

    from ecg_tfx import train as train_command
    from ecg_tfx.data import conversion_flags

    overrides = {"data_dir": data.WORKSPACE / f"tfrecords_realism_{name}", "run_dir": data.WORKSPACE /
                 f"run_realism_{name}", "seed": SEED, "precision": "float32", "export": "false"}
    if name == "real":
        overrides.update(input_dir=timing.SHARED_DATA / "ptbxl", epochs=REAL_EPOCHS, patience=REAL_EPOCHS)
    flags.FLAGS.unparse_flags()
    cwd = os.getcwd()
    os.chdir(timing.REPO)  # a flagfile names the flagfiles it includes from the repository's root
    try:
        flags.FLAGS(["bench", f"--flagfile={FLAGFILES[name]}", *(f"--{key}={value}" for key, value in
                                                                  overrides.items())])
    finally:
        os.chdir(cwd)
    return conversion_flags.config_from_flags(), train_command.config_from_flags()


def conversions() -> dict:
    """Each arm's (TrainConfig, manifest, seconds to convert); the config names the data dir. A later run reuses an
    identical finished conversion and replaces a different one."""
    from absl import logging

    from ecg_tfx.data import conversion

    logging.set_verbosity(logging.ERROR)
    found = {}
    for name in FLAGFILES:
        conversion_config, train_config = recipe(name)
        started = time.perf_counter()
        with timing.quiet():
            manifest = conversion.run(conversion_config, train_config.data_dir, overwrite=True)
        found[name] = (train_config, manifest, round(time.perf_counter() - started, 1))
    return found


def train(config: TrainConfig) -> tuple[str, dict]:
    """Trains one arm (evaluating its own validation and test splits, no export); (run dir, info)."""
    import shutil

    from ecg_tfx.training.trainer import train as train_run

    shutil.rmtree(config.run_dir, ignore_errors=True)
    with timing.quiet():
        info = train_run(config)
    return config.run_dir, info


def zero_shot(run_dir: str, data_dir: str, manifest) -> dict:
    """The synthetic run scored on real test records as `python -m ecg_tfx.evaluate --run_dir --data_dir` does."""
    from ecg_tfx.core.run_folder import RunFolder
    from ecg_tfx.evaluation.decision import Decision
    from ecg_tfx.evaluation.evaluate import evaluate, trained_source
    from ecg_tfx.models.ensemble import average, load_runs

    run = RunFolder(run_dir)
    members, spec = load_runs([run_dir])
    trained_on = trained_source(run)
    if trained_on in (None, manifest.source):
        raise RuntimeError(f"{run_dir} is not recorded as trained on another source than {manifest.source}")
    with timing.quiet():
        return evaluate(average(members), spec, data_dir, manifest, "test",
                        run.zero_shot_dir(manifest.source, "test"), decision=Decision.load(run.decision),
                        trained_on=trained_on)


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def scores(result: dict) -> dict:
    """Macro and per-class record ROC AUC with their bootstrap 95% CIs, from a metrics.json dict."""
    record, intervals = result["record"], result["record"]["confidence_intervals"]
    return {"records": result["records"],
            "macro": {"auc": rounded(record["roc_auc_macro"]), "ci95": [round(v, 3) for v in
                                                                        intervals["roc_auc_macro"]]},
            "per_class": {name: {"auc": rounded(value), "ci95": [round(v, 3) for v in
                                                                 intervals["roc_auc_per_class"][name] or []]}
                          for name, value in record["roc_auc_per_class"].items()}}


def record_predictions(path: str, labels: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(record ids, multi-hot targets, probabilities) from an evaluation's record_predictions.csv."""
    import csv

    import numpy as np

    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    targets = np.array([[name in row["true"].split(", ") for name in labels] for row in rows])
    probabilities = np.array([[float(row[f"p_{name}"]) for name in labels] for row in rows])
    return [row["record_id"] for row in rows], targets, probabilities


def resampled_aucs(weights: np.ndarray, targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[resamples, classes] ROC AUC of each resample (weights [resamples, n]: how often each record was drawn; ties
    count one half); NaN where a resample lacks positives or negatives of a class."""
    import numpy as np

    aucs = []
    for c in range(targets.shape[1]):
        positive, score = targets[:, c], scores[:, c]
        wins = (score[:, None] > score[None, :]) + 0.5 * (score[:, None] == score[None, :])
        wins = wins * np.outer(positive, ~positive)  # [positive i, negative j]
        pairs = (weights @ positive) * (weights @ ~positive)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(np.einsum("ri,ij,rj->r", weights, wins, weights) / pairs)
    return np.stack(aucs, axis=1)


def paired_ratio_interval(zero_shot_csv: str, real_csv: str, labels: list[str]) -> list[float]:
    """95% percentile interval of zero-shot macro AUC / real-trained macro AUC over the same records resampled with
    replacement for both (evaluate's resample count and seed); a class missing positives or negatives in a resample
    is left out of both macro means."""
    import numpy as np

    from ecg_tfx.evaluation.bootstrap import RESAMPLES, SEED

    zero_ids, targets, zero = record_predictions(zero_shot_csv, labels)
    real_ids, real_targets, real = record_predictions(real_csv, labels)
    if zero_ids != real_ids or not np.array_equal(targets, real_targets):
        raise RuntimeError("the two evaluations scored different records or labels")
    draws = np.random.default_rng(SEED).integers(0, len(targets), size=(RESAMPLES, len(targets)))
    weights = np.zeros((RESAMPLES, len(targets)))
    np.add.at(weights, (np.arange(RESAMPLES)[:, None], draws), 1.0)
    ratios = np.nanmean(resampled_aucs(weights, targets, zero), axis=1) / np.nanmean(
        resampled_aucs(weights, targets, real), axis=1)
    return [round(float(v), 3) for v in np.percentile(ratios[np.isfinite(ratios)], [2.5, 97.5])]


def run(quick: bool = False) -> dict:
    title = "Realism (synthetic-trained, zero-shot on real PTB-XL)"
    from ecg_tfx.core.run_folder import RunFolder

    ptbxl = timing.SHARED_DATA / "ptbxl"
    if not (ptbxl / "ptbxl_database.csv").is_file():
        return {"title": title, "conditions": {"data": f"SKIPPED: {ptbxl} (PTB-XL with ptbxl_database.csv) is "
                                                       "absent, and the score needs real records"},
                "ratios": [], "metrics": {}, "findings": [f"skipped: no PTB-XL at {ptbxl}"]}
    converted = conversions()
    configs = {name: config for name, (config, _, _) in converted.items()}
    synthetic_manifest, real_manifest = converted["synthetic"][1], converted["real"][1]
    seconds = {f"convert_{name}": converted_in for name, (_, _, converted_in) in converted.items()}
    synthetic = synthetic_manifest.config
    runs = {}
    for name, config in configs.items():
        started = time.perf_counter()
        runs[name] = train(config)
        seconds[f"train_{name}"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    zero = zero_shot(runs["synthetic"][0], configs["real"].data_dir, real_manifest)
    seconds["zero_shot_evaluate"] = round(time.perf_counter() - started, 1)
    zero_scores, real_scores = scores(zero), scores(runs["real"][1]["test_metrics"])
    ratio = zero_scores["macro"]["auc"] / real_scores["macro"]["auc"]
    ratio_ci = paired_ratio_interval(
        f"{RunFolder(runs['synthetic'][0]).zero_shot_dir(real_manifest.source, 'test')}/record_predictions.csv",
        f"{RunFolder(runs['real'][0]).evaluation_dir('test')}/record_predictions.csv", list(zero_scores["per_class"]))
    per_class_ratio = {name: round(zero_scores["per_class"][name]["auc"] / value["auc"], 3)
                       for name, value in real_scores["per_class"].items()
                       if value["auc"] and zero_scores["per_class"][name]["auc"] is not None}
    least = min(per_class_ratio, key=per_class_ratio.get)
    lowest = min(zero_scores["per_class"], key=lambda n: zero_scores["per_class"][n]["auc"] or 1.0)
    counts = {name: {split: manifest.splits[split].examples for split in ("train", "validation", "test")}
              for name, manifest in (("synthetic", synthetic_manifest), ("real", real_manifest))}
    epochs_note = (f"{configs['synthetic'].epochs} (synthetic) and {configs['real'].epochs} (real) epochs, float32, "
                   f"seed {SEED}")
    return {
        "title": title,
        "conditions": {
            "data": f"synthetic superdiagnostic cohort ({synthetic['synthetic_patients']} patients x "
                    f"{synthetic['synthetic_records_per_patient']} record(s) of {synthetic['synthetic_duration_s']} s, "
                    f"patient-wise {synthetic['split']}) and the shared PTB-XL subset ({ptbxl}, folds 1-8/9/10), "
                    f"{real_manifest.sample_rate_hz} Hz, {len(real_manifest.leads)} leads; windows per split {counts}",
            "model": f"{configs['real'].model} on {configs['real'].input_seconds}-s crops: {FLAGFILES['synthetic']} "
                     f"and {FLAGFILES['real']} cut to {epochs_note} ({runs['real'][1]['parameters']} parameters)",
            "scored on": f"PTB-XL fold 10 (test), {real_scores['records']} records; record ROC AUC, bootstrap 95% "
                         "CIs over records (evaluate's)",
            "seconds": seconds,
        },
        "ratios": [
            timing.target("zero-shot / real-trained macro AUC", ratio, RATIO_TARGET, True,
                          f"paired bootstrap 95% CI {ratio_ci}; macro {zero_scores['macro']['auc']} "
                          f"{zero_scores['macro']['ci95']} vs "
                          f"{real_scores['macro']['auc']} {real_scores['macro']['ci95']}; target = the issue's "
                          f"{ABSOLUTE_TARGET} over the full recipe's {REAL_FULL_RECIPE_AUC}"),
            timing.target("zero-shot macro AUC (absolute)", zero_scores["macro"]["auc"], ABSOLUTE_TARGET, True,
                          f"the issue's realism target; CI {zero_scores['macro']['ci95']}"),
        ],
        "metrics": {"zero_shot_synthetic_trained": zero_scores, "real_trained": real_scores,
                    "macro_ratio": {"value": round(ratio, 3), "ci95_paired": ratio_ci},
                    "per_class_ratio": per_class_ratio,
                    "synthetic_own_test_macro_auc": round(runs["synthetic"][1]["test_metrics"]["record"]
                                                          ["roc_auc_macro"], 3)},
        "findings": [
            f"least realistic class: {least} (zero-shot/real-trained AUC {per_class_ratio[least]}; "
            f"zero-shot {zero_scores['per_class'][least]['auc']} vs {real_scores['per_class'][least]['auc']}); "
            f"lowest zero-shot AUC: {lowest} ({zero_scores['per_class'][lowest]['auc']})",
            "one seed on 53 test records: a macro CI spans about +-0.07, so a ratio difference below ~0.1 between "
            "two runs of this section is not a change of the generator",
        ],
    }

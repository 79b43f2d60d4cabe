"""The model card written with every export: `assets.extra/model_card.json` and `model_card.md` (the same facts).

It gathers what the run folder (or an ensemble's run folders, all named) and the data folder know: the model and
its input, the data and its patient-wise splits (manifest.json), the test metrics with their bootstrap 95% CIs
(the run's metrics.json; an ensemble's are not in any run folder), the fitted decision (calibration, thresholds,
abstention), the input contract, the intended use and the limits. What is missing (no data folder, a run never
evaluated, test metrics of another decision) is said, not guessed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from ecg_tfx.core import manifest as manifest_file
from ecg_tfx.core import storage
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.serving.contract import InputContract

JSON_FILE = "model_card.json"
MARKDOWN_FILE = "model_card.md"
SMALL_TEST_RECORDS = 100  # below this many test records the card warns that the metrics are rough
INTENDED_USE = (
    "Research and engineering: a decision-support signal on resting ECGs recorded like the training data, "
    "read by a clinician. Not a medical device, not validated for diagnosis, triage or monitoring; "
    "an 'inconclusive' answer means the model should not be relied on for that recording.")
LIMITS = (
    "Trained and evaluated on the data named here only; other devices, populations, lead placements or "
    "sampling chains may perform worse.",
    "Calibration, thresholds and abstention were fitted on the validation split; they hold for data like it.",
    "Only the classes listed are recognised; anything else is scored as one of them or as none.",
    "The in-graph signal-quality gate flags flat, clipped, noisy and wandering leads and implausible heart rates "
    "(at a 100-Hz model rate it cannot see mains or most EMG noise); faults it does not check, such as swapped "
    "electrodes, can still get a confident answer.",
)


def model_card(spec: ModelSpec, decision: Decision, run_dirs: Sequence[str], data_dir: str | None) -> dict:
    """The card's facts as plain JSON, of one run or of a seed ensemble of several (`runs` names them)."""
    runs = [RunFolder(run_dir) for run_dir in run_dirs]
    infos = [storage.read_json(run.run_info) if storage.exists(run.run_info) else {} for run in runs]
    info = infos[0]
    data_dir = data_dir or info.get("data_dir")
    limits = list(LIMITS)
    if len(runs) == 1:
        metrics = _test_metrics(runs[0], decision, limits)
    else:
        metrics = None
        limits.append(f"The ensemble's test metrics are not in any run folder: evaluate it with `python -m "
                      f"ecg_tfx.evaluate --run_dir={','.join(run_dirs)} --out_dir=...`.")
    parameters = [member.get("parameters") for member in infos]
    if decision.fitted_on is None:
        limits.append("No decision was fitted for this run: probabilities are uncalibrated, decisions are the "
                      "argmax (single-label) or 0.5 per class, and the model never abstains.")
    elif decision.target_reached is False:
        limits.append(f"No validation coverage reached the target accuracy {decision.target_accuracy}: the "
                      "abstention threshold is the one of the highest validation accuracy.")
    return {
        "model": {
            "architecture": spec.model, "classes": list(spec.labels), "multi_label": spec.multi_label,
            "leads": list(spec.leads), "sample_rate_hz": spec.sample_rate_hz,
            "input_seconds": spec.input_samples / spec.sample_rate_hz,
            "window_seconds": spec.window_samples / spec.sample_rate_hz,
            "parameters": None if None in parameters else sum(parameters), "trained_with": {
                key: info[key] for key in ("tensorflow", "keras", "precision", "epochs_run") if key in info},
        },
        "runs": list(run_dirs),
        "data": _data(data_dir),
        "test_metrics": metrics,
        "decision": decision.to_json(),
        "input_contract": dataclasses.asdict(InputContract.for_spec(spec)),
        "intended_use": INTENDED_USE,
        "limits": limits,
    }


def _data(data_dir: str | None) -> dict | None:
    if not data_dir or not storage.exists(storage.join(data_dir, manifest_file.FILENAME)):
        return None
    manifest = Manifest.load(data_dir)
    return {
        "source": manifest.source, "labels": manifest.label_preset, "split_by": "patient",
        "splits": {name: {"records": split.records, "patients": split.patients, "windows": split.examples,
                          "class_records": dict(split.class_records)} for name, split in manifest.splits.items()},
    }


def _test_metrics(run: RunFolder, decision: Decision, limits: list[str]) -> dict | None:
    """Per-record test metrics with CIs; the decision's only when the run was evaluated with this decision."""
    path = storage.join(run.evaluation_dir("test"), "metrics.json")
    if not storage.exists(path):
        limits.append("The run has no test metrics (metrics.json): evaluate it before relying on it.")
        return None
    result = storage.read_json(path)
    record = result["record"]
    metrics = {
        "records": result["records"],
        "roc_auc_macro": record["roc_auc_macro"],
        "f1_macro": record["f1_macro"] if "f1_macro" in record else record["macro"]["f1"],
        "accuracy": record.get("subset_accuracy", record.get("accuracy")),
        "confidence_intervals": record.get("confidence_intervals"),
    }
    assessed = result.get("decision")
    if assessed and assessed["decision"] == json.loads(json.dumps(decision.to_json())):
        metrics["decision"] = {key: assessed[key] for key in (
            "f1_macro", "accuracy", "per_class", "ece_before", "ece_after", "abstention", "confidence_intervals")}
    else:
        limits.append("The test metrics were computed before this decision was fitted: evaluate the run again "
                      "for the thresholded, calibrated metrics.")
    if result["records"] < SMALL_TEST_RECORDS:
        limits.append(f"The test split has only {result['records']} records: read the metrics with their CIs.")
    return metrics


def markdown(card: dict) -> str:
    """The card as Markdown."""
    model, data, metrics, decision = card["model"], card["data"], card["test_metrics"], card["decision"]
    lines = [f"# Model card: {model['architecture']} ECG classifier", "",
             f"**Classes** ({'multi-label' if model['multi_label'] else 'single-label'}): "
             f"{', '.join(model['classes'])}. **Input**: leads {', '.join(model['leads'])} at "
             f"{model['sample_rate_hz']} Hz, model inputs of {model['input_seconds']:g} s. "
             f"**Parameters**: {model['parameters'] or 'n/a'}.", "",
             f"**Runs** ({'a seed ensemble: the mean of their probabilities' if len(card['runs']) > 1 else 'one'}): "
             + ", ".join(f"`{run}`" for run in card["runs"]) + ".", "", "## Intended use", "", card["intended_use"], "",
             "## Data and splits", ""]
    if data:
        lines += [f"Source `{data['source']}`, labels `{data['labels']}`, split by patient.", "",
                  "| split | records | patients | windows |", "|---|---|---|---|"]
        lines += [f"| {name} | {split['records']} | {split['patients']} | {split['windows']} |"
                  for name, split in data["splits"].items()]
    else:
        lines.append("The data folder was not available at export.")
    lines += ["", "## Test metrics (per record, bootstrap 95% CIs)", ""]
    if metrics:
        intervals = metrics["confidence_intervals"] or {}
        lines += [f"{metrics['records']} records.", "", "| metric | value | 95% CI |", "|---|---|---|"]
        lines += [f"| {name} | {_number(metrics[name])} | {_interval(intervals.get(name))} |"
                  for name in ("roc_auc_macro", "f1_macro", "accuracy")]
        served = metrics.get("decision")
        if served:
            abstention = served["abstention"]
            lines += ["", f"Served decision: macro F1 {_number(served['f1_macro'])} "
                      f"({_interval(served['confidence_intervals'].get('f1_macro'))}), accuracy "
                      f"{_number(served['accuracy'])}; ECE {served['ece_before']:.3f} raw, {served['ece_after']:.3f} "
                      f"calibrated; coverage {abstention['coverage']:.1%} with accuracy "
                      f"{_number(abstention['accuracy_answered'])} on the answered.", "",
                      "| class | F1 | sensitivity | specificity | support |", "|---|---|---|---|---|"]
            rows = [(name, served["per_class"][name]) for name in model["classes"]]  # in the model's class order
            lines += [f"| {name} | {_number(c['f1'])} | {_number(c['sensitivity'])} | {_number(c['specificity'])} "
                      f"| {c['support']} |" for name, c in rows]
    else:
        lines.append("Not evaluated.")
    calibration = decision["calibration"]
    fitted = decision["fitted_on"]
    lines += ["", "## Decision", "",
              "Fitted on: " + (f"the {fitted['split']} split ({fitted['records']} records)." if fitted
                               else "nothing (defaults)."),
              f"Calibration: {decision['rules']['calibration']}, logit scale {_list(calibration['scale'])}, "
              f"offset {_list(calibration['offset'])}.",
              f"Thresholds: {decision['rules']['thresholds']}"
              + (f": {_list(decision['thresholds'])}." if decision["thresholds"] else "."),
              f"Abstention: inconclusive below confidence {decision['abstain_below']:.3f} "
              f"({decision['rules']['abstention']}, target {decision['target_accuracy']}).",
              "", "## Input contract", "", "```json", json.dumps(card["input_contract"], indent=2, sort_keys=True),
              "```", "", "## Limits", ""]
    lines += [f"- {limit}" for limit in card["limits"]]
    return "\n".join(lines) + "\n"


def write_model_card(version_dir: str, spec: ModelSpec, decision: Decision, run_dirs: Sequence[str],
                     data_dir: str | None) -> None:
    """Writes both files into `<version_dir>/assets.extra/`."""
    card = model_card(spec, decision, run_dirs, data_dir)
    extra = storage.join(version_dir, "assets.extra")
    storage.makedirs(extra)
    storage.write_json(storage.join(extra, JSON_FILE), card)
    storage.write_bytes(storage.join(extra, MARKDOWN_FILE), markdown(card).encode())


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(value: list[float] | None) -> str:
    return "n/a" if not value else f"[{value[0]:.3f}, {value[1]:.3f}]"


def _list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"

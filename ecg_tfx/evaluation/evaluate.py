"""Evaluation of a trained model on one split, per window and per record, with metrics and figures.

Each stored window is scored as in serving (`model_spec.window_probabilities`: the mean over its sliding model
inputs); a record's probabilities are the mean over its windows. Outputs, each written atomically:
metrics.json, classification_report.txt, confusion_matrix.png, roc.png, sample_predictions.png and
predictions.csv / record_predictions.csv (one row per window / record, for error analysis). Per record, metrics.json
also holds bootstrap 95% CIs (`record.confidence_intervals`) and the served decision's assessment (`decision`:
calibration ECE before/after, thresholded per-class metrics, abstention, its CIs), drawn in reliability.png and
coverage.png.

Zero-shot: data of another source than the run trained on (a run on synthetic ECGs scoring real PTB-XL records)
is scored the same way when it has the model's classes, leads, rate and window (`Manifest.check_compatible`);
metrics.json then says so (`zero_shot`), and its per-class ROC AUCs with their bootstrap CIs are the realism score.
"""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import tensorflow as tf

from ecg_tfx.core import storage
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec, window_probabilities
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.data.input_pipeline import make_dataset
from ecg_tfx.evaluation import decision as decisions
from ecg_tfx.evaluation import plots
from ecg_tfx.evaluation.bootstrap import confidence_intervals
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.evaluation.metrics import THRESHOLD, aggregate_by_record, compute_metrics

SAMPLE_TRACES = 6
BATCH_SIZE = 64  # windows per model call when scoring a split


@dataclasses.dataclass
class Predictions:
    """Per-window outputs in dataset order, plus one lead of a few windows for the sample figure."""

    record_ids: list[str]
    probabilities: np.ndarray  # [windows, classes]
    targets: np.ndarray  # [windows, classes] one-/multi-hot
    traces: dict[int, np.ndarray]  # window index -> [time] of the plotted lead, in plotting order


def plot_lead(spec: ModelSpec) -> int:
    """Lead II when the model has it (the usual rhythm strip), else the first lead."""
    return spec.leads.index("ii") if "ii" in spec.leads else 0


class _SampleKeeper:
    """Keeps one lead of the first window of each true class and of the first `SAMPLE_TRACES` records."""

    def __init__(self) -> None:
        self.traces: dict[int, np.ndarray] = {}
        self.first_of_class: dict[tuple[int, ...], int] = {}
        self.first_of_record: list[int] = []

    def offer(self, index: int, target: np.ndarray, new_record: bool, trace: np.ndarray) -> None:
        key = tuple(np.flatnonzero(target).tolist())
        record_wanted = new_record and len(self.first_of_record) < SAMPLE_TRACES
        if key in self.first_of_class and not record_wanted:
            return
        self.first_of_class.setdefault(key, index)
        if record_wanted:
            self.first_of_record.append(index)
        self.traces[index] = trace.copy()  # not a view that would keep the whole batch alive

    def chosen(self) -> dict[int, np.ndarray]:
        """Class representatives first (in label order), then other records' first windows."""
        order = [self.first_of_class[key] for key in sorted(self.first_of_class)]
        order += [index for index in self.first_of_record if index not in order]
        return {index: self.traces[index] for index in order[:SAMPLE_TRACES]}


def predict(model, spec: ModelSpec, data_dir: str, manifest: Manifest, split: str, batch_size: int) -> Predictions:
    """Runs the model over every window of `split`, keeping a few traces for the figure (not the whole split)."""
    manifest.split(split)  # ValueError naming the splits there are
    dataset = make_dataset(data_dir, manifest, split, spec, batch_size, training=False, cache="",
                           with_record_ids=True)
    probabilities_of = tf.function(lambda windows: window_probabilities(model, windows, spec), reduce_retracing=True,
                                   autograph=False)
    lead = plot_lead(spec)
    record_ids: list[str] = []
    probabilities, targets = [], []
    samples = _SampleKeeper()
    for batch in dataset:
        probabilities.append(probabilities_of(batch["signal"]).numpy())
        targets.append(batch["target"].numpy())
        traces = batch["signal"][:, :, lead].numpy()
        for record_id, target, trace in zip(batch["record_id"].numpy(), targets[-1], traces):
            record_ids.append(record_id.decode())
            new_record = len(record_ids) == 1 or record_ids[-2] != record_ids[-1]
            samples.offer(len(record_ids) - 1, target, new_record, trace)
    if not record_ids:
        raise ValueError(f"split {split!r} of {data_dir} has no examples")
    return Predictions(record_ids, np.concatenate(probabilities), np.concatenate(targets), samples.chosen())


def fit_decision(model, spec: ModelSpec, data_dir: str, manifest: Manifest, batch_size: int = BATCH_SIZE,
                 target_accuracy: float = decisions.TARGET_ACCURACY, predictions: Predictions | None = None
                 ) -> Decision:
    """The Decision fitted on the validation split's per-record probabilities (`evaluation.decision`).

    `predictions`: the validation split's, when already computed (`predict`); else they are.
    """
    manifest.check_compatible(spec)
    if predictions is None:
        predictions = predict(model, spec, data_dir, manifest, "validation", batch_size)
    _, probabilities, targets = aggregate_by_record(predictions.record_ids, predictions.probabilities,
                                                    predictions.targets)
    return decisions.fit(probabilities, targets, spec.multi_label, "validation", target_accuracy)


def trained_source(run: RunFolder) -> str | None:
    """The source of the data a run trained on (its run_info.json's data_dir's manifest); None when unknown."""
    if not storage.exists(run.run_info):
        return None
    data_dir = storage.read_json(run.run_info).get("data_dir")
    try:
        return Manifest.load(data_dir).source if data_dir else None
    except (OSError, ValueError, tf.errors.OpError):
        return None


def evaluate(model, spec: ModelSpec, data_dir: str, manifest: Manifest, split: str, out_dir: str,
             batch_size: int = BATCH_SIZE, decision: Decision | None = None, trained_on: str | None = None,
             predictions: Predictions | None = None) -> dict:
    """Scores `split` per window and per record, writes all outputs into `out_dir`, returns metrics.json's dict.

    `decision` is what the export serves (fitted on validation); None assesses the defaults (argmax / 0.5).
    `trained_on`, the source of the model's training data when it differs from this data's, marks the
    evaluation as zero-shot. `predictions`: the split's, when already computed (`predict`); else they are.
    """
    manifest.check_compatible(spec)
    decision = decision or Decision.default(len(spec.labels), spec.multi_label)
    if predictions is None:
        predictions = predict(model, spec, data_dir, manifest, split, batch_size)
    records, record_probabilities, record_targets = aggregate_by_record(
        predictions.record_ids, predictions.probabilities, predictions.targets)
    record = compute_metrics(record_targets, record_probabilities, spec.labels, spec.multi_label)
    record["confidence_intervals"] = confidence_intervals(  # of the metrics above: argmax or THRESHOLD
        record_targets, record_probabilities,
        Decision.default(len(spec.labels), spec.multi_label).present(record_probabilities), spec.multi_label,
        spec.labels)
    result = {
        "split": split,
        "examples": len(predictions.record_ids),
        "records": len(records),
        "window": compute_metrics(predictions.targets, predictions.probabilities, spec.labels, spec.multi_label),
        "record": record,
        "decision": decisions.assess(decision, spec.labels, record_targets, record_probabilities),
    }
    if trained_on is not None:
        result["zero_shot"] = {"trained_on": trained_on, "source": manifest.source, "label_preset":
                               manifest.label_preset, "data_dir": data_dir}
    storage.makedirs(out_dir)
    storage.write_json(storage.join(out_dir, "metrics.json"), result)
    storage.write_bytes(storage.join(out_dir, "classification_report.txt"), _report(result).encode())
    storage.write_bytes(storage.join(out_dir, "predictions.csv"), _predictions_csv(
        predictions.record_ids, predictions.probabilities, predictions.targets, spec))
    storage.write_bytes(storage.join(out_dir, "record_predictions.csv"), _predictions_csv(
        records, record_probabilities, record_targets, spec))
    _write_figures(out_dir, result, predictions, (record_targets, record_probabilities), spec)
    _write_decision_figures(out_dir, result, decision, record_targets, record_probabilities)
    return result


def _write_decision_figures(out_dir: str, result: dict, decision: Decision, targets: np.ndarray,
                            probabilities: np.ndarray) -> None:
    """reliability.png (calibration before/after) and coverage.png (accuracy against coverage), per record."""
    assessed = result["decision"]
    title = f"{result['split']} split, records (n={result['records']})"
    storage.write_bytes(storage.join(out_dir, "reliability.png"), plots.reliability_png(
        {f"raw (ECE {assessed['ece_before']:.3f})": assessed["reliability_before"],
         f"calibrated (ECE {assessed['ece_after']:.3f})": assessed["reliability_after"]},
        f"Reliability, {title}", "class probability" if decision.multi_label else "confidence (max probability)"))
    calibrated = decision.calibration.apply(probabilities)
    right = decisions.correct(decision.present(calibrated), targets)
    _, coverage, accuracy = decisions.coverage_curve(decision.confidence(calibrated), right)
    storage.write_bytes(storage.join(out_dir, "coverage.png"), plots.coverage_png(
        coverage, accuracy, assessed["abstention"], f"Accuracy against coverage, {title}"))


def _panel_titles(result: dict) -> tuple[str, str]:
    return f"Windows (n={result['examples']})", f"Records (n={result['records']})"


def _write_figures(out_dir: str, result: dict, predictions: Predictions, record_level: tuple[np.ndarray, np.ndarray],
                   spec: ModelSpec) -> None:
    windows, records = _panel_titles(result)
    title = f"{result['split']} split"
    if spec.multi_label:
        confusion = plots.multilabel_confusion_png(
            {windows: result["window"]["confusion_matrices"], records: result["record"]["confusion_matrices"]},
            f"Confusion per class at threshold {THRESHOLD}, {title}")
    else:
        confusion = plots.confusion_matrix_png(
            {windows: result["window"]["confusion_matrix"], records: result["record"]["confusion_matrix"]},
            spec.labels, f"Confusion matrix, {title}")
    storage.write_bytes(storage.join(out_dir, "confusion_matrix.png"), confusion)
    storage.write_bytes(storage.join(out_dir, "roc.png"), plots.roc_png(
        {windows: (predictions.targets, predictions.probabilities), records: record_level},
        spec.labels, f"One-vs-rest ROC, {title}"))
    storage.write_bytes(storage.join(out_dir, "sample_predictions.png"), _samples_png(predictions, spec))


def _samples_png(predictions: Predictions, spec: ModelSpec) -> bytes:
    """The kept windows, each titled with record, truth, prediction and confidence."""
    indices = list(predictions.traces)
    titles, correct = [], []
    for index in indices:
        truth, predicted, confidence = _decision(predictions.targets[index], predictions.probabilities[index], spec)
        truth, predicted = truth.replace("_", " "), predicted.replace("_", " ")
        titles.append(f"{predictions.record_ids[index]}   true: {truth}   predicted: {predicted} ({confidence})")
        correct.append(truth == predicted)
    units = "amplitude (z-score)" if spec.preprocessing.standardize else "amplitude (mV)"
    return plots.sample_predictions_png(np.stack([predictions.traces[i] for i in indices]), spec.sample_rate_hz,
                                        spec.leads[plot_lead(spec)], titles, correct, units)


def _decision(target: np.ndarray, probabilities: np.ndarray, spec: ModelSpec) -> tuple[str, str, str]:
    """(true classes, predicted classes, confidence) as text for one example."""
    if spec.multi_label:
        chosen = np.flatnonzero(probabilities >= THRESHOLD)
        truth = ", ".join(spec.labels[i] for i in np.flatnonzero(target)) or "none"
        predicted = ", ".join(spec.labels[i] for i in chosen) or "none"
        confidence = ", ".join(f"{probabilities[i]:.0%}" for i in chosen) or f"max {probabilities.max():.0%}"
        return truth, predicted, confidence
    best = int(probabilities.argmax())
    return spec.labels[int(target.argmax())], spec.labels[best], f"{probabilities[best]:.0%}"


def _predictions_csv(record_ids: list[str], probabilities: np.ndarray, targets: np.ndarray, spec: ModelSpec) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["record_id", "true", "predicted", "confidence"] + [f"p_{label}" for label in spec.labels])
    for record_id, target, row in zip(record_ids, targets, probabilities):
        writer.writerow([record_id, *_decision(target, row, spec), *(f"{p:.6f}" for p in row)])
    return text.getvalue().encode()


def _report(result: dict) -> str:
    windows, records = _panel_titles(result)
    return "".join(f"{result['split']} split, {title}\n\n{result[level]['classification_report']}\n"
                   for level, title in (("window", windows), ("record", records)))


def _realism(result: dict) -> str:
    """The zero-shot line: macro and per-class record ROC AUC with 95% CIs."""
    record, about = result["record"], result["zero_shot"]
    intervals = record["confidence_intervals"]

    def auc(value: float | None, interval: list[float] | None) -> str:
        shown = "n/a" if value is None else f"{value:.3f}"
        return shown + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    per_class = "  ".join(f"{name} {auc(value, intervals['roc_auc_per_class'][name])}"
                          for name, value in record["roc_auc_per_class"].items())
    return (f"  zero-shot on {about['source']} (trained on {about['trained_on']}): record ROC AUC macro "
            f"{auc(record['roc_auc_macro'], intervals['roc_auc_macro'])}; {per_class}")


def summary(result: dict, out_dir: str) -> str:
    """A few headline numbers per level, for the terminal."""
    keys = ("accuracy", "subset_accuracy", "hamming_loss", "roc_auc_macro", "sensitivity", "specificity")
    assessed = result["decision"]
    abstention = assessed["abstention"]
    lines = [f"{result['split']}: {result['examples']} windows, {result['records']} records -> {out_dir}"]
    for level in ("window", "record"):
        metrics = result[level]
        f1 = metrics["macro"]["f1"] if "macro" in metrics else metrics["f1_macro"]
        values = {"macro_f1": f1, **{key: metrics[key] for key in keys if key in metrics}}
        lines.append(f"  {level:6s} " + "  ".join(
            f"{key}={'n/a' if value is None else f'{value:.3f}'}" for key, value in values.items()))
    intervals = result["record"]["confidence_intervals"]
    lines.append("  record 95% CI " + "  ".join(
        f"{key}=[{value[0]:.3f}, {value[1]:.3f}]" for key, value in intervals.items()
        if key in ("roc_auc_macro", "f1_macro", "accuracy") and value))
    answered = abstention["accuracy_answered"]
    answered = "n/a" if answered is None else f"{answered:.3f}"
    if "zero_shot" in result:
        lines.append(_realism(result))
    lines.append(f"  decision: ECE {assessed['ece_before']:.3f} -> {assessed['ece_after']:.3f} calibrated, "
                 f"macro F1 {assessed['f1_macro'] or 0:.3f}, coverage {abstention['coverage']:.1%} at confidence >= "
                 f"{abstention['threshold']:.3f} (accuracy answered {answered})")
    return "\n".join(lines)

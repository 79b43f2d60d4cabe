"""Classification metrics for ECG predictions (numpy + scikit-learn only, no TensorFlow).

Everything returned is plain JSON (floats, ints, strings, lists; None where a value is undefined), so the
result can go straight into metrics.json. Classes absent from the evaluated split are kept in per-class
tables but left out of macro averages, and the skipped ones are named, because a macro average over a
class with no examples measures nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

THRESHOLD = 0.5  # multi-label decision threshold on each class's probability


def compute_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str], multi_label: bool
) -> dict:
    """Metrics of `probabilities` [n, classes] against one-/multi-hot `y_true` [n, classes].

    Single-label: accuracy, precision/recall/F1 per class and macro, macro one-vs-rest ROC AUC, confusion
    matrix (rows true, columns predicted), scikit-learn's text report, and for two classes sensitivity and
    specificity with the second label as the positive class. Multi-label: macro and per-class ROC AUC,
    per-class precision/recall/F1 at `THRESHOLD` (and their macro F1), subset accuracy, Hamming loss,
    per-class 2x2 confusion matrices and the text report.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if y_true.shape != probabilities.shape or y_true.ndim != 2 or y_true.shape[1] != len(labels):
        raise ValueError(f"y_true {y_true.shape} and probabilities {probabilities.shape} must both be "
                         f"[examples, {len(labels)}]")
    if len(y_true) == 0:
        raise ValueError("no examples to evaluate")
    labels = list(labels)
    result = {
        "examples": len(y_true),
        "labels": labels,
        "multi_label": multi_label,
        "class_counts": dict(zip(labels, _ints(y_true.sum(axis=0)))),
        **roc_auc(y_true, probabilities, labels),
    }
    if multi_label:
        result.update(_multi_label(y_true.astype(int), probabilities >= THRESHOLD, labels))
    else:
        result.update(_single_label(y_true.argmax(axis=1), probabilities.argmax(axis=1), labels))
    return result


def roc_auc(y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str]) -> dict:
    """One-vs-rest ROC AUC per class and their macro mean, over the classes with both positives and negatives."""
    per_class: dict[str, float | None] = {}
    skipped: dict[str, str] = {}
    for index, name in enumerate(labels):
        positives = int(y_true[:, index].sum())
        if positives in (0, len(y_true)):
            per_class[name] = None
            skipped[name] = "no positive examples" if positives == 0 else "no negative examples"
        else:
            per_class[name] = float(skm.roc_auc_score(y_true[:, index], probabilities[:, index]))
    scored = [v for v in per_class.values() if v is not None]
    return {
        "roc_auc_macro": float(np.mean(scored)) if scored else None,
        "roc_auc_per_class": per_class,
        "roc_auc_skipped_classes": skipped,
    }


def _single_label(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict:
    everything = list(range(len(labels)))
    present = sorted(set(truth.tolist()) | set(predicted.tolist()))  # scikit-learn's default label set
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        truth, predicted, labels=everything, zero_division=0)
    macro = skm.precision_recall_fscore_support(truth, predicted, labels=present, average="macro", zero_division=0)
    result = {
        "accuracy": float(skm.accuracy_score(truth, predicted)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "macro": {"precision": float(macro[0]), "recall": float(macro[1]), "f1": float(macro[2])},
        "macro_classes": [labels[i] for i in present],
        "confusion_matrix": skm.confusion_matrix(truth, predicted, labels=everything).tolist(),
        "classification_report": skm.classification_report(
            truth, predicted, labels=present, target_names=[labels[i] for i in present], digits=3,
            zero_division=0),
    }
    if len(labels) == 2:
        result.update(binary_rates(result["confusion_matrix"], labels[1]))
    return result


def binary_rates(confusion: list[list[int]], positive: str) -> dict:
    """Sensitivity TP/(TP+FN) and specificity TN/(TN+FP) from a 2x2 matrix whose second class is positive."""
    (tn, fp), (fn, tp) = confusion
    return {
        "positive_class": positive,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
    }


def _multi_label(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict:
    predicted = predicted.astype(int)
    precision, recall, f1, support = skm.precision_recall_fscore_support(truth, predicted, zero_division=0)
    return {
        "threshold": THRESHOLD,
        "subset_accuracy": float(skm.accuracy_score(truth, predicted)),
        "hamming_loss": float(skm.hamming_loss(truth, predicted)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "f1_macro": float(np.mean(f1)),
        "classification_report": skm.classification_report(
            truth, predicted, target_names=labels, digits=3, zero_division=0),
        "confusion_matrices": {  # per class [[TN, FP], [FN, TP]]
            name: matrix.tolist() for name, matrix in zip(labels, skm.multilabel_confusion_matrix(truth, predicted))
        },
    }


def aggregate_by_record(
    record_ids: Sequence[str], probabilities: np.ndarray, targets: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-record mean of window probabilities, records sorted by id; a record's windows must share targets."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    records, first, inverse = np.unique(np.asarray(list(record_ids), dtype=str), return_index=True,
                                        return_inverse=True)  # first: index of each record's first window
    counts = np.bincount(inverse, minlength=len(records))
    sums = np.zeros((len(records), probabilities.shape[1]))
    np.add.at(sums, inverse, probabilities)
    record_targets = targets[first]
    if not np.array_equal(record_targets[inverse], targets):
        mixed = sorted({records[i] for i in inverse[(record_targets[inverse] != targets).any(axis=1)]})
        raise ValueError(f"windows of the same record have different targets: {mixed[:5]}")
    return records.tolist(), sums / counts[:, None], record_targets


def _ints(values: np.ndarray) -> list[int]:
    return [int(round(v)) for v in values]

"""What an export decides from its probabilities, fitted on the validation split (never on test).

A `Decision` holds the calibration (`calibration.Calibration`), the per-class thresholds of a multi-label model
and the confidence below which the answer is `inconclusive`. The rules, fitted on per-record validation
probabilities (the mean over a record's windows, what `serving_default` returns):

- multi-label thresholds: per class, the F1-optimal threshold on the calibrated probability (ties: the lowest,
  i.e. the most sensitive); a class without both positive and negative validation records keeps 0.5.
  Single-label models take the argmax and have no thresholds.
- confidence: single-label, the calibrated probability of the argmax class; multi-label, the least certain class
  decision, min over classes of p (present) or 1 - p (absent).
- abstention: the lowest confidence threshold that keeps validation accuracy (single-label: argmax right;
  multi-label: every class right) of the records at or above it >= `target_accuracy`, i.e. the largest coverage
  reaching the target. Where no coverage reaches it, the threshold of the highest accuracy (ties: the largest
  coverage) is kept and `target_reached` is false. Records below it are `inconclusive` ("low_confidence").

Exports of runs without a fitted decision use `Decision.default`: no calibration, argmax / 0.5, no abstention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ecg_tfx.core import storage
from ecg_tfx.evaluation import bootstrap, calibration
from ecg_tfx.evaluation.calibration import Calibration

DEFAULT_THRESHOLD = 0.5
TARGET_ACCURACY = 0.9  # default abstention target: validation accuracy of the records answered
THRESHOLD_RULE = "F1-optimal per class on validation records (ties: the lowest); 0.5 without both outcomes"
ABSTENTION_RULE = "largest validation coverage whose accuracy >= target_accuracy"


@dataclasses.dataclass(frozen=True)
class Decision:
    """Calibration, thresholds (multi-label; empty for single-label) and the abstention threshold."""

    calibration: Calibration
    thresholds: tuple[float, ...]
    abstain_below: float  # confidence below which the answer is inconclusive; 0 never abstains
    target_accuracy: float | None = None  # None: not fitted (defaults)
    target_reached: bool | None = None
    fitted_on: dict | None = None  # split, records; None for the defaults

    @property
    def multi_label(self) -> bool:
        return self.calibration.multi_label

    @classmethod
    def default(cls, classes: int, multi_label: bool) -> Decision:
        return cls(Calibration.identity(classes, multi_label), (DEFAULT_THRESHOLD,) * classes if multi_label else (),
                   0.0)

    def to_json(self) -> dict:
        value = dataclasses.asdict(self)
        value["rules"] = {"thresholds": THRESHOLD_RULE if self.multi_label else "argmax",
                          "calibration": "Platt scaling per class" if self.multi_label else "temperature scaling",
                          "abstention": ABSTENTION_RULE}
        return value

    @classmethod
    def from_json(cls, value: dict) -> Decision:
        fields = {key: value[key] for key in (f.name for f in dataclasses.fields(cls))}
        c = fields["calibration"]
        fields["calibration"] = Calibration(c["multi_label"], tuple(c["scale"]), tuple(c["offset"]))
        fields["thresholds"] = tuple(fields["thresholds"])
        return cls(**fields)

    def save(self, path: str) -> None:
        storage.write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> Decision:
        return cls.from_json(storage.read_json(path))

    def present(self, calibrated: np.ndarray) -> np.ndarray:
        """Boolean [n, classes]: the classes decided present (single-label: the argmax alone)."""
        if self.multi_label:
            return calibrated >= np.asarray(self.thresholds)
        return np.eye(calibrated.shape[1], dtype=bool)[calibrated.argmax(axis=1)]

    def confidence(self, calibrated: np.ndarray) -> np.ndarray:
        """[n] the confidence of each decision (see the module docstring)."""
        if self.multi_label:
            return np.where(self.present(calibrated), calibrated, 1 - calibrated).min(axis=1)
        return calibrated.max(axis=1)


def correct(present: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[n] whether every class decision of an example is right (single-label: the argmax is the true class)."""
    return np.all(present == np.asarray(targets).astype(bool), axis=1)


def fit(probabilities: np.ndarray, targets: np.ndarray, multi_label: bool, split: str = "validation",
        target_accuracy: float = TARGET_ACCURACY) -> Decision:
    """Fits calibration, thresholds and abstention on per-record probabilities [n, classes] and targets."""
    fitted = calibration.fit(probabilities, targets, multi_label)
    calibrated = fitted.apply(probabilities)
    targets = np.asarray(targets)
    thresholds = tuple(f1_optimal_threshold(calibrated[:, c], targets[:, c]) for c in range(targets.shape[1])
                       ) if multi_label else ()
    decision = Decision(fitted, thresholds, 0.0)
    confidence = decision.confidence(calibrated)
    abstain_below, reached = abstention_threshold(confidence, correct(decision.present(calibrated), targets),
                                                  target_accuracy)
    return dataclasses.replace(decision, abstain_below=abstain_below, target_accuracy=target_accuracy,
                               target_reached=reached, fitted_on={"split": split, "records": len(targets)})


def f1_optimal_threshold(probability: np.ndarray, truth: np.ndarray) -> float:
    """The threshold t (present when p >= t) among the observed probabilities that maximizes F1."""
    truth = np.asarray(truth).astype(bool)
    if truth.all() or not truth.any():
        return DEFAULT_THRESHOLD
    order = np.argsort(-probability, kind="stable")
    p, y = probability[order], truth[order]
    last = np.r_[p[1:] != p[:-1], True]  # the last of each run of equal probabilities
    true_positives = np.cumsum(y)[last]
    predicted = (np.arange(len(p)) + 1)[last]
    f1 = 2 * true_positives / (truth.sum() + predicted)
    best = len(f1) - 1 - np.argmax(f1[::-1])  # ties: the lowest threshold
    return float(p[last][best])


def abstention_threshold(confidence: np.ndarray, right: np.ndarray, target_accuracy: float) -> tuple[float, bool]:
    """(threshold, target reached): answering records with confidence >= threshold, see the module docstring."""
    order = np.argsort(-confidence, kind="stable")
    c, r = confidence[order], right[order]
    last = np.r_[c[1:] != c[:-1], True]
    accuracy = (np.cumsum(r) / np.arange(1, len(r) + 1))[last]
    candidates = c[last]
    reached = accuracy >= target_accuracy
    if reached.any():
        index = np.flatnonzero(reached)[-1]
    else:
        index = np.flatnonzero(accuracy == accuracy.max())[-1]
    return (0.0 if index == len(candidates) - 1 else float(candidates[index])), bool(reached.any())


def coverage_curve(confidence: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, coverage, accuracy of the answered) for every distinct confidence, highest first."""
    order = np.argsort(-confidence, kind="stable")
    c, r = confidence[order], right[order]
    last = np.r_[c[1:] != c[:-1], True]
    answered = np.arange(1, len(r) + 1)
    return c[last], answered[last] / len(r), (np.cumsum(r) / answered)[last]


def assess(decision: Decision, labels: Sequence[str], targets: np.ndarray, probabilities: np.ndarray) -> dict:
    """The served decision on per-record raw probabilities [n, classes]: calibration (ECE and reliability bins
    before/after), thresholded per-class F1, sensitivity and specificity, abstention and bootstrap 95% CIs."""
    targets = np.asarray(targets).astype(bool)
    calibrated = decision.calibration.apply(probabilities)
    present = decision.present(calibrated)
    confidence = decision.confidence(calibrated)
    right = correct(present, targets)
    answered = confidence >= decision.abstain_below
    true_positive = np.sum(targets & present, axis=0)
    false_positive = np.sum(~targets & present, axis=0)
    false_negative = np.sum(targets & ~present, axis=0)
    true_negative = np.sum(~targets & ~present, axis=0)
    per_class = {}
    for c in range(targets.shape[1]):
        denominator = 2 * true_positive[c] + false_positive[c] + false_negative[c]
        per_class[labels[c]] = {
            "f1": float(2 * true_positive[c] / denominator) if denominator else 0.0,
            "sensitivity": _ratio(true_positive[c], true_positive[c] + false_negative[c]),
            "specificity": _ratio(true_negative[c], true_negative[c] + false_positive[c]),
            "support": int(targets[:, c].sum()),
        }
    counted = (true_positive + false_positive + false_negative > 0) | decision.multi_label
    f1 = [entry["f1"] for entry, used in zip(per_class.values(), counted) if used]
    before = calibration.reliability(probabilities, targets, decision.multi_label)
    after = calibration.reliability(calibrated, targets, decision.multi_label)
    return {
        "records": len(targets),
        "decision": decision.to_json(),
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "reliability_before": before,
        "reliability_after": after,
        "per_class": per_class,
        "f1_macro": float(np.mean(f1)) if f1 else None,
        "accuracy": float(right.mean()),
        "abstention": {
            "threshold": decision.abstain_below,
            "coverage": float(answered.mean()),
            "inconclusive": int((~answered).sum()),
            "accuracy_answered": float(right[answered].mean()) if answered.any() else None,
        },
        "confidence_intervals": bootstrap.confidence_intervals(targets, calibrated, present, decision.multi_label,
                                                               labels),
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None

"""Calibration of a model's probabilities (numpy + SciPy): fitted on validation, measured by the ECE.

One form covers both kinds of model, so the served graph applies it with a handful of stock TF ops
(`ecg_tfx.serving.decide`): the probabilities are turned back into logits z (single-label: log p, which softmax
maps back to p; multi-label: log(p / (1 - p)) per class), each class's logit becomes `scale * z + offset`, and
softmax (single-label) or the sigmoid (multi-label) gives the calibrated probabilities. Single-label models get
temperature scaling (one scale 1/T for every class, offsets 0: the argmax never changes); multi-label models get
Platt scaling per class (its own scale and offset).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize, special

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] before taking logits
ECE_BINS = 10  # equal-width confidence bins of the expected calibration error and the reliability diagram


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Per-class logit scale and offset (see the module docstring); the identity is scale 1, offset 0."""

    multi_label: bool
    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def identity(cls, classes: int, multi_label: bool) -> Calibration:
        return cls(multi_label, (1.0,) * classes, (0.0,) * classes)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities [n, classes] of raw ones [n, classes]."""
        z = logits(probabilities, self.multi_label) * np.asarray(self.scale) + np.asarray(self.offset)
        return special.expit(z) if self.multi_label else special.softmax(z, axis=-1)


def logits(probabilities: np.ndarray, multi_label: bool) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p) if multi_label else np.log(p)


def fit(probabilities: np.ndarray, targets: np.ndarray, multi_label: bool) -> Calibration:
    """Fits by minimum negative log-likelihood: one temperature (single-label) or Platt scaling per class.

    Platt's targets are smoothed as in Platt (1999), (positives + 1) / (positives + 2) and 1 / (negatives + 2), so
    a class separable on a small validation set keeps finite weights. A multi-label class without both positive
    and negative examples keeps the identity (nothing to fit).
    """
    z = logits(probabilities, multi_label)
    targets = np.asarray(targets, dtype=np.float64)
    classes = z.shape[1]
    if not multi_label:
        def nll(log_scale: float) -> float:
            return -np.mean(np.sum(targets * special.log_softmax(z * np.exp(log_scale), axis=-1), axis=-1))
        log_scale = optimize.minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded").x
        return Calibration(False, (float(np.exp(log_scale)),) * classes, (0.0,) * classes)
    scale, offset = [1.0] * classes, [0.0] * classes
    for c in range(classes):
        y = targets[:, c]
        if y.min() == y.max():
            continue
        positives = y.sum()
        y = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (len(y) - positives + 2))

        def nll(params: np.ndarray, zc: np.ndarray = z[:, c], y: np.ndarray = y) -> float:
            u = params[0] * zc + params[1]
            return float(np.mean(np.logaddexp(0, u) - y * u))  # binary cross-entropy of sigmoid(u)
        scale[c], offset[c] = (float(v) for v in optimize.minimize(nll, np.array([1.0, 0.0]), method="L-BFGS-B",
                                                                   bounds=[(1e-3, 100.0), (-50.0, 50.0)]).x)
    return Calibration(True, tuple(scale), tuple(offset))


def confidence_and_correct(probabilities: np.ndarray, targets: np.ndarray, multi_label: bool
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The (confidence, was right) pairs the ECE bins: single-label one per example (max probability, argmax
    right); multi-label one per example and class (the probability of the class, the class present)."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets)
    if multi_label:
        return probabilities.ravel(), targets.ravel().astype(bool)
    return probabilities.max(axis=1), probabilities.argmax(axis=1) == targets.argmax(axis=1)


def reliability(probabilities: np.ndarray, targets: np.ndarray, multi_label: bool, bins: int = ECE_BINS) -> dict:
    """Per equal-width bin of confidence: count, mean confidence and observed frequency (None when empty), and
    the expected calibration error: sum over bins of count/total * |frequency - confidence|."""
    confidence, correct = confidence_and_correct(probabilities, targets, multi_label)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    sum_confidence = np.bincount(index, confidence, minlength=bins)
    sum_correct = np.bincount(index, correct.astype(float), minlength=bins)
    filled = counts > 0
    mean_confidence = np.where(filled, sum_confidence / np.maximum(counts, 1), np.nan)
    frequency = np.where(filled, sum_correct / np.maximum(counts, 1), np.nan)
    ece = float(np.sum(counts[filled] * np.abs(frequency[filled] - mean_confidence[filled])) / counts.sum())
    return {
        "bins": bins,
        "counts": counts.tolist(),
        "mean_confidence": [None if np.isnan(v) else float(v) for v in mean_confidence],
        "frequency": [None if np.isnan(v) else float(v) for v in frequency],
        "ece": ece,
    }

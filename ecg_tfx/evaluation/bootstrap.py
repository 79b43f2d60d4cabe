"""Bootstrap 95% confidence intervals over records for macro and per-class ROC AUC, macro F1 and accuracy (numpy,
vectorized).

Records are resampled with replacement `RESAMPLES` times from a fixed seed (as the PTB-XL benchmark does); each
resample is a weight vector (how often each record was drawn), so every statistic of all resamples is a few
matrix products. Intervals are the 2.5th and 97.5th percentiles. In a resample, a class's AUC needs both
positive and negative records (otherwise it is left out of the macro mean) and macro F1 averages the classes
that are true or predicted there (as `metrics.compute_metrics` does for single-label; multi-label averages all
classes, as its `f1_macro`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


def confidence_intervals(targets: np.ndarray, scores: np.ndarray, present: np.ndarray, multi_label: bool,
                         class_names: Sequence[str], resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """95% intervals of `roc_auc_macro` and `roc_auc_per_class` (by class name; from `scores` [n, classes]),
    `f1_macro` and `accuracy` (from the decided `present` [n, classes]: subset accuracy for multi-label) over records
    resampled with replacement. An interval is [low, high], or None when no resample defines the statistic."""
    targets, present = np.asarray(targets).astype(bool), np.asarray(present).astype(bool)
    n = len(targets)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    class_aucs = _class_aucs(weights, targets, np.asarray(scores, dtype=np.float64))
    values = {
        "roc_auc_macro": _macro_auc(class_aucs),
        "f1_macro": _macro_f1(weights, targets, present, multi_label),
        "accuracy": weights @ np.all(present == targets, axis=1) / n,
    }
    result: dict = {"method": "percentile bootstrap over records", "level": LEVEL, "resamples": resamples,
                    "seed": seed}
    result.update({name: _interval(samples) for name, samples in values.items()})
    result["roc_auc_per_class"] = {name: _interval(samples) for name, samples in zip(class_names, class_aucs.T,
                                                                                     strict=True)}
    return result


def _interval(samples: np.ndarray) -> list[float] | None:
    """The central LEVEL interval of the finite samples."""
    tail = 100 * (1 - LEVEL) / 2
    samples = samples[np.isfinite(samples)]
    return [float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))] if len(samples) else None


def _class_aucs(weights: np.ndarray, targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[resamples, classes] weighted Mann-Whitney AUC (ties count one half); NaN where a class lacks positives or
    negatives."""
    aucs = []
    for c in range(targets.shape[1]):
        values, group = np.unique(scores[:, c], return_inverse=True)
        one_hot = np.zeros((len(group), len(values)))
        one_hot[np.arange(len(group)), group] = 1.0
        positives = (weights * targets[:, c]) @ one_hot  # [resamples, distinct scores], ascending
        negatives = (weights * ~targets[:, c]) @ one_hot
        below = np.cumsum(negatives, axis=1) - negatives
        pairs = positives.sum(axis=1) * negatives.sum(axis=1)
        wins = np.sum(positives * (below + 0.5 * negatives), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(np.where(pairs > 0, wins / pairs, np.nan))
    return np.stack(aucs, axis=1)


def _macro_auc(aucs: np.ndarray) -> np.ndarray:
    """[resamples] mean of the defined class AUCs of each resample; NaN if none is."""
    scored = np.isfinite(aucs).sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(scored > 0, np.nansum(aucs, axis=1) / np.maximum(scored, 1), np.nan)


def _macro_f1(weights: np.ndarray, targets: np.ndarray, present: np.ndarray, multi_label: bool) -> np.ndarray:
    true_positive = weights @ (targets & present)
    false_positive = weights @ (~targets & present)
    false_negative = weights @ (targets & ~present)
    denominator = 2 * true_positive + false_positive + false_negative
    f1 = np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1e-12), 0.0)
    if multi_label:
        return f1.mean(axis=1)
    counted = denominator > 0  # the classes true or predicted in the resample
    return np.sum(f1 * counted, axis=1) / np.maximum(counted.sum(axis=1), 1)

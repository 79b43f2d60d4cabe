"""Bootstrap CIs: the vectorized statistics equal scikit-learn's on each resample; fixed seed, fixed answer."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from ecg_tfx.evaluation import bootstrap


def _data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    targets = np.eye(3, dtype=bool)[rng.integers(0, 3, n)]
    scores = np.round(np.clip(0.4 * targets + rng.uniform(0, 0.7, targets.shape), 0, 1), 1)  # rounded: ties
    return targets, scores


def test_vectorized_statistics_equal_scikit_learn_on_explicit_resamples():
    targets, scores = _data()
    present = np.eye(3, dtype=bool)[scores.argmax(1)]
    rng = np.random.default_rng(5)
    draws = rng.integers(0, len(targets), size=(20, len(targets)))
    weights = np.stack([np.bincount(d, minlength=len(targets)) for d in draws]).astype(float)
    class_aucs = bootstrap._class_aucs(weights, targets, scores)
    aucs = bootstrap._macro_auc(class_aucs)
    f1s = bootstrap._macro_f1(weights, targets, present, multi_label=False)
    for draw, class_auc, auc, f1 in zip(draws, class_aucs, aucs, f1s):
        t, s, p = targets[draw], scores[draw], present[draw]
        expected = [skm.roc_auc_score(t[:, c], s[:, c]) if 0 < t[:, c].sum() < len(t) else np.nan for c in range(3)]
        np.testing.assert_allclose(class_auc, expected)
        assert np.isclose(auc, np.nanmean(expected))
        assert np.isclose(f1, skm.f1_score(t.argmax(1), p.argmax(1), average="macro"))


def test_intervals_bracket_the_estimate_and_repeat_with_the_seed():
    targets, scores = _data(200)
    present = np.eye(3, dtype=bool)[scores.argmax(1)]
    first = bootstrap.confidence_intervals(targets, scores, present, False, ("a", "b", "c"))
    assert first == bootstrap.confidence_intervals(targets, scores, present, False, ("a", "b", "c"))
    assert first["resamples"] == 1000 and first["seed"] == 0
    accuracy = np.mean(present.argmax(1) == targets.argmax(1))
    low, high = first["accuracy"]
    assert low < accuracy < high and high - low < 0.2
    auc = np.mean([skm.roc_auc_score(targets[:, c], scores[:, c]) for c in range(3)])
    assert first["roc_auc_macro"][0] < auc < first["roc_auc_macro"][1]
    for c, name in enumerate(("a", "b", "c")):  # wider than the macro mean's, and around the class's AUC
        low, high = first["roc_auc_per_class"][name]
        assert low < skm.roc_auc_score(targets[:, c], scores[:, c]) < high
        assert high - low > first["roc_auc_macro"][1] - first["roc_auc_macro"][0]
    other = bootstrap.confidence_intervals(targets, scores, present, False, ("a", "b", "c"), seed=1)
    assert other["accuracy"] != first["accuracy"]


def test_an_auc_undefined_in_every_resample_is_none():
    targets = np.ones((10, 1), dtype=bool)  # no negatives
    result = bootstrap.confidence_intervals(targets, np.full((10, 1), 0.7), targets, True, ("a",), resamples=50)
    assert result["roc_auc_macro"] is None and result["roc_auc_per_class"] == {"a": None}
    assert result["accuracy"] == [1.0, 1.0]

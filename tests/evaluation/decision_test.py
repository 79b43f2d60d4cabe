"""The decision's rules on hand-made validation sets, and its assessment on test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecg_tfx.evaluation import decision as decisions
from ecg_tfx.evaluation.decision import Decision


def test_f1_optimal_threshold_by_hand():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    y = np.array([1, 1, 0, 1, 0, 0])
    # thresholds 0.9, 0.8, 0.7, 0.6: F1 = 2/4, 4/5, 4/6, 6/7 -> 0.6 (everything above 0.3 present)
    assert decisions.f1_optimal_threshold(p, y) == 0.6
    # ties: two thresholds give the same F1 -> the lower one (more sensitive)
    assert decisions.f1_optimal_threshold(np.array([0.9, 0.5, 0.4]), np.array([1, 0, 1])) == 0.4
    assert decisions.f1_optimal_threshold(p, np.zeros(6)) == decisions.DEFAULT_THRESHOLD


def test_abstention_threshold_keeps_the_largest_coverage_reaching_the_target():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    right = np.array([True, True, True, False, True, False])
    assert decisions.abstention_threshold(confidence, right, 0.75) == (0.7, True)  # 4/5 = 0.8 >= 0.75
    assert decisions.abstention_threshold(confidence, right, 1.0) == (0.9, True)
    assert decisions.abstention_threshold(confidence, right, 0.5) == (0.0, True)  # everything: never abstain
    # unreachable: the highest accuracy (0.5 at the top one... here 1/2 then 1/3), the largest coverage among ties
    assert decisions.abstention_threshold(np.array([0.9, 0.8, 0.7]), np.array([False, True, False]), 0.9) == (
        0.8, False)


def test_fit_on_separable_multi_label_data_and_round_trip():
    rng = np.random.default_rng(0)
    targets = rng.uniform(size=(200, 3)) < 0.4
    probabilities = np.clip(np.where(targets, 0.35, 0.15) + rng.uniform(-0.1, 0.1, targets.shape), 0, 1)
    fitted = decisions.fit(probabilities, targets, multi_label=True, target_accuracy=0.95)
    calibrated = fitted.calibration.apply(probabilities)
    assert decisions.correct(fitted.present(calibrated), targets).all()  # 0.25 < p < 0.25 separates: all right
    assert fitted.abstain_below == 0.0 and fitted.target_reached and fitted.fitted_on["records"] == 200
    assert Decision.from_json(json.loads(json.dumps(fitted.to_json()))) == fitted


def test_default_decision_is_argmax_or_one_half_and_never_abstains():
    single = Decision.default(3, multi_label=False)
    p = np.array([[0.2, 0.5, 0.3]])
    np.testing.assert_array_equal(single.present(single.calibration.apply(p)), [[False, True, False]])
    multi = Decision.default(3, multi_label=True)
    np.testing.assert_array_equal(multi.present(np.array([[0.2, 0.5, 0.7]])), [[False, True, True]])
    assert multi.confidence(np.array([[0.2, 0.5, 0.7]]))[0] == pytest.approx(0.5)  # the least certain decision
    assert single.abstain_below == multi.abstain_below == 0.0 and single.fitted_on is None


def test_assess_reports_thresholded_rates_and_abstention():
    decision = Decision.default(2, multi_label=True)
    targets = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.8], [0.2, 0.3], [0.6, 0.45]])
    result = decisions.assess(decision, ["a", "b"], targets, probabilities)
    a, b = result["per_class"]["a"], result["per_class"]["b"]
    # a: TP 1, FN 1, FP 1, TN 1; b: TP 1, FN 1, FP 0, TN 2
    assert (a["sensitivity"], a["specificity"], a["f1"]) == (0.5, 0.5, 0.5)
    assert (b["sensitivity"], b["specificity"], b["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert result["f1_macro"] == pytest.approx((0.5 + 2 / 3) / 2) and result["accuracy"] == 0.5
    assert result["abstention"] == {"threshold": 0.0, "coverage": 1.0, "inconclusive": 0, "accuracy_answered": 0.5}
    # confidences 0.9, 0.6, 0.7, 0.55 (the least certain class); records 0 and 2 stay, both right
    abstaining = Decision(decision.calibration, decision.thresholds, 0.65)
    assert decisions.assess(abstaining, ["a", "b"], targets, probabilities)["abstention"] == {
        "threshold": 0.65, "coverage": 0.5, "inconclusive": 2, "accuracy_answered": 1.0}

"""The decision's rules on hand-made validation sets, its assessment on test, and its fit on real PTB-XL records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from ecg_tfx.evaluation import decision as decisions
from ecg_tfx.evaluation import evaluate
from ecg_tfx.evaluation.calibration import EPSILON
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.evaluation.metrics import aggregate_by_record


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


def _nll(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary negative log-likelihood over records and classes."""
    p = np.clip(probabilities, EPSILON, 1 - EPSILON)
    return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log1p(-p)))


def test_fit_on_real_ptbxl_validation_records(ptbxl_lead_i):
    """What training fits (`evaluate.fit_decision`) on fold 9 of the shared PTB-XL subset (62 records) with a
    small real lead-I model: each part does what it is for on those records."""
    model, spec, data_dir, manifest = (ptbxl_lead_i[key] for key in ("model", "spec", "data", "manifest"))
    decision = evaluate.fit_decision(model, spec, str(data_dir), manifest)
    predictions = evaluate.predict(model, spec, str(data_dir), manifest, "validation", 64)
    _, probabilities, targets = aggregate_by_record(predictions.record_ids, predictions.probabilities,
                                                    predictions.targets)
    assert decision.multi_label and decision.fitted_on == {"split": "validation", "records": len(targets)} == {
        "split": "validation", "records": 62}
    calibrated = decision.calibration.apply(probabilities)
    # Thresholds: one per class inside (0, 1), and F1 at them at least F1 at 0.5 for every class.
    assert len(decision.thresholds) == len(spec.labels) and all(0 < t < 1 for t in decision.thresholds)
    fitted_f1 = f1_score(targets, decision.present(calibrated), average=None, zero_division=0)
    half_f1 = f1_score(targets, probabilities >= 0.5, average=None, zero_division=0)
    assert np.all(fitted_f1 >= half_f1) and fitted_f1.mean() > half_f1.mean()
    # Calibration does not worsen the validation NLL.
    assert _nll(calibrated, targets) <= _nll(probabilities, targets)
    # Abstention: the records kept reach the target accuracy, and keeping the next-most-confident record would not.
    right = decisions.correct(decision.present(calibrated), targets)
    kept = decision.confidence(calibrated) >= decision.abstain_below
    _, coverage, accuracy = decisions.coverage_curve(decision.confidence(calibrated), right)
    assert decision.target_accuracy == decisions.TARGET_ACCURACY
    if decision.target_reached:
        assert kept.any() and right[kept].mean() >= decision.target_accuracy
        assert np.all(accuracy[coverage > kept.mean()] < decision.target_accuracy)
    else:  # no coverage reaches the target: the most accurate one is kept and the decision says so
        assert np.all(accuracy < decision.target_accuracy) and right[kept].mean() == accuracy.max()

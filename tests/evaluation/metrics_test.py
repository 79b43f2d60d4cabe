"""Metrics against scikit-learn's own calls and hand-computed values; per-record aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from ecg_tfx.evaluation.metrics import aggregate_by_record, compute_metrics

PTB = ["Healthy control", "Myocardial infarction"]


def one_hot(indices: list[int], classes: int) -> np.ndarray:
    return np.eye(classes)[indices]


def random_probabilities(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    logits = rng.normal(size=(n, classes))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def assert_json(result: dict) -> None:
    json.dumps(result, allow_nan=False)  # raises on numpy scalars, NaN or anything else not plain JSON


def test_single_label_matches_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=60)
    probabilities = random_probabilities(rng, 60, 3)
    predicted = probabilities.argmax(axis=1)
    result = compute_metrics(one_hot(truth, 3), probabilities, ["a", "b", "c"], multi_label=False)

    assert_json(result)
    assert result["examples"] == 60
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted))
    precision, recall, f1, support = skm.precision_recall_fscore_support(truth, predicted)
    for i, name in enumerate("abc"):
        assert result["per_class"][name] == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]})
    assert result["macro"]["f1"] == pytest.approx(skm.f1_score(truth, predicted, average="macro"))
    assert result["macro"]["recall"] == pytest.approx(skm.recall_score(truth, predicted, average="macro"))
    assert result["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(truth, probabilities, multi_class="ovr"))
    assert result["roc_auc_skipped_classes"] == {}
    assert result["confusion_matrix"] == skm.confusion_matrix(truth, predicted).tolist()
    assert result["classification_report"] == skm.classification_report(
        truth, predicted, target_names=["a", "b", "c"], digits=3, zero_division=0)
    assert "sensitivity" not in result


def test_binary_sensitivity_specificity_by_hand():
    # 4 MI: 3 found (TP), 1 missed (FN); 6 healthy: 4 correct (TN), 2 called MI (FP).
    truth = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p_mi = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.4, 0.45, 0.6, 0.95])
    result = compute_metrics(one_hot(truth, 2), np.stack([1 - p_mi, p_mi], axis=1), PTB, multi_label=False)

    assert result["positive_class"] == "Myocardial infarction"
    assert result["confusion_matrix"] == [[4, 2], [1, 3]]
    assert result["sensitivity"] == pytest.approx(3 / 4)
    assert result["specificity"] == pytest.approx(4 / 6)
    assert result["accuracy"] == pytest.approx(7 / 10)
    assert result["per_class"]["Myocardial infarction"]["precision"] == pytest.approx(3 / 5)
    # AUC = share of (MI, healthy) pairs ranked correctly: 0.9, 0.8, 0.7 each beat 5 of 6 healthy; 0.2 beats 1.
    assert result["roc_auc_per_class"]["Myocardial infarction"] == pytest.approx((5 + 5 + 5 + 1) / 24)
    assert result["roc_auc_macro"] == pytest.approx((5 + 5 + 5 + 1) / 24)


def test_binary_without_positives_has_undefined_sensitivity():
    result = compute_metrics(one_hot([0, 0, 0], 2), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), PTB, False)
    assert_json(result)
    assert result["sensitivity"] is None
    assert result["specificity"] == pytest.approx(2 / 3)
    assert result["roc_auc_macro"] is None
    assert result["roc_auc_skipped_classes"] == {"Healthy control": "no negative examples",
                                                 "Myocardial infarction": "no positive examples"}


def test_absent_classes_are_skipped_from_macro_auc_and_named():
    rng = np.random.default_rng(1)
    truth = rng.choice([0, 2, 3], size=40)  # classes 1 ("mi") and 4 ("af") never occur
    probabilities = random_probabilities(rng, 40, 5)
    labels = ["norm", "mi", "bbb", "hyp", "af"]
    result = compute_metrics(one_hot(truth, 5), probabilities, labels, multi_label=False)

    assert result["roc_auc_skipped_classes"] == {"mi": "no positive examples", "af": "no positive examples"}
    assert result["roc_auc_per_class"]["mi"] is None
    present = [0, 2, 3]
    assert result["roc_auc_macro"] == pytest.approx(
        skm.roc_auc_score(one_hot(truth, 5)[:, present], probabilities[:, present], average="macro"))
    predicted = probabilities.argmax(axis=1)
    assert result["macro"]["f1"] == pytest.approx(skm.f1_score(truth, predicted, average="macro"))
    assert result["macro_classes"] == [labels[i] for i in sorted(set(truth) | set(predicted))]
    assert result["class_counts"]["mi"] == 0 and sum(result["class_counts"].values()) == 40
    assert np.array(result["confusion_matrix"]).shape == (5, 5)


def test_multi_label_matches_sklearn_and_hand_values():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    p = np.array([[0.9, 0.2, 0.6], [0.3, 0.7, 0.1], [0.6, 0.4, 0.2], [0.2, 0.1, 0.3]])
    result = compute_metrics(y, p, ["NORM", "MI", "STTC"], multi_label=True)

    assert_json(result)
    assert result["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"))
    assert result["roc_auc_per_class"]["MI"] == pytest.approx(skm.roc_auc_score(y[:, 1], p[:, 1]))
    predicted = (p >= 0.5).astype(int)  # [[1,0,1],[0,1,0],[1,0,0],[0,0,0]]
    f1 = skm.f1_score(y, predicted, average=None)
    assert [result["per_class"][n]["f1"] for n in ("NORM", "MI", "STTC")] == pytest.approx(f1)
    assert result["f1_macro"] == pytest.approx(np.mean(f1))
    assert result["subset_accuracy"] == pytest.approx(2 / 4)  # rows 0 and 1 exactly right
    assert result["hamming_loss"] == pytest.approx(2 / 12)  # (2, MI) and (3, STTC) missed
    assert result["confusion_matrices"]["MI"] == [[2, 0], [1, 1]]


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        compute_metrics(np.zeros((3, 2)), np.zeros((3, 3)), PTB, multi_label=False)


def test_aggregate_by_record_averages_each_records_windows():
    ids = ["b", "a", "b", "c", "a", "b"]
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [0.9, 0.1], [1.0, 0.0], [0.3, 0.7]])
    targets = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    records, record_probabilities, record_targets = aggregate_by_record(ids, probabilities, targets)

    assert records == ["a", "b", "c"]
    np.testing.assert_allclose(record_probabilities, [[0.8, 0.2], [0.3, 0.7], [0.9, 0.1]])
    np.testing.assert_array_equal(record_targets, [[1, 0], [0, 1], [1, 0]])
    shuffled = aggregate_by_record(ids[::-1], probabilities[::-1], targets[::-1])
    assert shuffled[0] == records
    np.testing.assert_allclose(shuffled[1], record_probabilities)


def test_aggregate_by_record_rejects_windows_with_different_targets():
    with pytest.raises(ValueError, match="different targets.*'a'"):
        aggregate_by_record(["a", "a"], np.full((2, 2), 0.5), np.array([[1, 0], [0, 1]]))

"""Calibration: the fits recover known miscalibration, and the ECE measures it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from ecg_tfx.evaluation import calibration
from ecg_tfx.evaluation.calibration import Calibration


def _overconfident_single_label(n: int = 4000, temperature: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z); the 'model' reports softmax(temperature * z): overconfident by `temperature`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 4))
    labels = np.array([rng.choice(4, p=p) for p in special.softmax(z, axis=1)])
    return special.softmax(temperature * z, axis=1), np.eye(4)[labels]


def test_temperature_scaling_recovers_the_temperature_and_keeps_the_argmax():
    probabilities, targets = _overconfident_single_label()
    fitted = calibration.fit(probabilities, targets, multi_label=False)
    assert fitted.scale[0] == pytest.approx(1 / 3, rel=0.1) and set(fitted.scale) == {fitted.scale[0]}
    assert fitted.offset == (0.0,) * 4
    calibrated = fitted.apply(probabilities)
    np.testing.assert_array_equal(calibrated.argmax(1), probabilities.argmax(1))
    np.testing.assert_allclose(calibrated.sum(1), 1)
    before = calibration.reliability(probabilities, targets, False)["ece"]
    after = calibration.reliability(calibrated, targets, False)["ece"]
    assert before > 0.1 and after < 0.03, (before, after)


def test_platt_scaling_per_class_recovers_scale_and_offset():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=(6000, 2))
    truth = rng.uniform(size=z.shape) < special.expit(z)  # the true logit is z
    probabilities = special.expit(np.array([2.0, 0.5]) * z + np.array([0.0, 1.0]))  # miscalibrated per class
    targets = truth.astype(float)
    targets[:, 1] = truth[:, 1]
    fitted = calibration.fit(probabilities, targets, multi_label=True)
    np.testing.assert_allclose(fitted.scale, [0.5, 2.0], rtol=0.1)
    np.testing.assert_allclose(fitted.offset, [0.0, -2.0], atol=0.15)
    assert calibration.reliability(fitted.apply(probabilities), targets, True)["ece"] < 0.03


def test_a_class_without_both_outcomes_keeps_the_identity():
    probabilities = np.array([[0.9, 0.2], [0.7, 0.6], [0.2, 0.4]])
    targets = np.array([[1, 0], [1, 1], [1, 0]])  # class 0 is always present
    fitted = calibration.fit(probabilities, targets, multi_label=True)
    assert (fitted.scale[0], fitted.offset[0]) == (1.0, 0.0)
    np.testing.assert_allclose(Calibration.identity(2, True).apply(probabilities), probabilities, atol=1e-6)


def test_ece_by_hand():
    # Single-label, 4 examples: confidences 0.95 and 0.85 (bin 9 and 8), 0.55 twice (bin 5), correct 1, 0, 1, 0.
    probabilities = np.array([[0.95, 0.05], [0.15, 0.85], [0.55, 0.45], [0.45, 0.55]])
    targets = np.array([[1, 0], [1, 0], [1, 0], [1, 0]])
    bins = calibration.reliability(probabilities, targets, False)
    assert bins["counts"][9] == 1 and bins["counts"][8] == 1 and bins["counts"][5] == 2 and sum(bins["counts"]) == 4
    assert bins["frequency"][5] == 0.5 and bins["mean_confidence"][5] == pytest.approx(0.55)
    assert bins["frequency"][0] is None
    assert bins["ece"] == pytest.approx((0.05 + 0.85 + 2 * 0.05) / 4)

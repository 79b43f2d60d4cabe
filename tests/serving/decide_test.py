"""The decision in the graph: the same numbers as the numpy fit it comes from, and the outputs' meaning."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ecg_tfx.evaluation.calibration import Calibration
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.serving.decide import calibrate, decision_outputs

NAMES = tf.constant(["norm", "mi", "sttc"])


def _strings(tensor: tf.Tensor) -> list[str]:
    return [value.decode() for value in tensor.numpy()]


def test_in_graph_calibration_equals_numpy():
    rng = np.random.default_rng(0)
    raw = rng.dirichlet(np.ones(3), size=50).astype(np.float32)
    raw[0] = [1.0, 0.0, 0.0]  # saturated probabilities are clipped, not turned into infinities
    for calibration in (Calibration(False, (0.4,) * 3, (0.0,) * 3),
                        Calibration(True, (0.5, 2.0, 1.3), (0.2, -1.0, 0.0))):
        graph = calibrate(tf.constant(raw), calibration).numpy()
        np.testing.assert_allclose(graph[1:], calibration.apply(raw[1:]), atol=2e-6)
        np.testing.assert_allclose(graph[0], calibration.apply(raw[:1])[0], atol=1e-4)  # float32 rounds 1 - 1e-7


def test_multi_label_outputs_name_the_present_classes_and_abstain_below_the_threshold():
    decision = Decision(Calibration.identity(3, True), (0.5, 0.3, 0.6), abstain_below=0.7)
    calibrated = tf.constant([[0.9, 0.1, 0.95],  # norm, sttc; confidence min(0.9, 0.9, 0.95) = 0.9
                              [0.1, 0.35, 0.2],  # mi at its own threshold 0.3; confidence 0.35: inconclusive
                              [0.05, 0.1, 0.2]])  # none present; confidence 0.8
    out = decision_outputs(calibrated, decision, NAMES)
    np.testing.assert_array_equal(out["present"].numpy(), [[True, False, True], [False, True, False],
                                                           [False, False, False]])
    assert _strings(out["present_names"]) == ["norm,sttc", "mi", ""]
    np.testing.assert_allclose(out["confidence"].numpy(), [0.9, 0.35, 0.8], atol=1e-6)
    assert _strings(out["reason"]) == ["", "low_confidence", ""]
    assert _strings(out["decision"]) == ["norm,sttc", "inconclusive", "none"]


def test_single_label_keeps_the_argmax_and_a_poor_signal_wins_over_confidence():
    decision = Decision(Calibration.identity(3, False), (), abstain_below=0.5)
    calibrated = tf.constant([[0.2, 0.7, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    out = decision_outputs(calibrated, decision, NAMES, poor_signal=tf.constant([False, True, True]))
    np.testing.assert_array_equal(out["present"].numpy().argmax(1), [1, 0, 2])
    assert out["present"].numpy().sum() == 3
    assert _strings(out["reason"]) == ["", "poor_signal", "poor_signal"]
    assert _strings(out["decision"]) == ["mi", "inconclusive", "inconclusive"]
    assert _strings(decision_outputs(calibrated, decision, NAMES)["reason"]) == ["", "low_confidence", ""]


def test_calibration_converts_to_tflite_builtins_and_matches():
    calibration = Calibration(True, (0.5, 2.0, 1.3), (0.2, -1.0, 0.0))
    function = tf.function(lambda p: calibrate(p, calibration), input_signature=[tf.TensorSpec([1, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    raw = np.array([[0.3, 0.9, 0.5]], np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], raw)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]),
                               calibration.apply(raw), atol=2e-6)


def test_an_uncalibrated_decision_passes_the_probabilities_through_unchanged():
    raw = tf.constant([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    for multi_label in (False, True):
        np.testing.assert_array_equal(calibrate(raw, Calibration.identity(3, multi_label)).numpy(), raw.numpy())

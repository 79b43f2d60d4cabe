"""The fitted `Decision` (`ecg_tfx.evaluation.decision`) in the served graph, in stock TF ops (TFLite builtins too).

The one place a record's answer is made: `record_outputs` takes the record's raw probabilities (the mean of its
windows' uncalibrated probabilities, as the decision was fitted) and its raw mV signal, calibrates, runs the
signal-quality gate and decides. The SavedModel's signatures call it in-graph; `predict` calls it eagerly on the
mean of a TFLite window model's (uncalibrated) outputs, so both paths calibrate the mean, never average calibrated
windows. `calibrate` turns raw probabilities into calibrated ones; `decision_outputs` adds what a client acts on:
- `present` bool [batch, classes]: the classes decided present (single-label: the argmax; multi-label: the
  calibrated probability at or above its class's threshold), `present_names` string [batch]: their names joined
  by ",";
- `confidence` float32 [batch]: the confidence of that decision (the abstention rule's);
- `reason` string [batch]: why the answer is inconclusive, "" when it is not: "low_confidence" (confidence below
  the threshold fitted on validation) or "poor_signal" (the caller's signal-quality verdict, which wins);
- `decision` string [batch]: `present_names` ("none" if no class is present), or "inconclusive".
"""

from __future__ import annotations

import tensorflow as tf

from ecg_tfx.dsp.quality import signal_quality
from ecg_tfx.evaluation.calibration import EPSILON, Calibration
from ecg_tfx.evaluation.decision import Decision

INCONCLUSIVE = "inconclusive"
LOW_CONFIDENCE = "low_confidence"
POOR_SIGNAL = "poor_signal"
NO_CLASS = "none"


def calibrate(probabilities: tf.Tensor, calibration: Calibration) -> tf.Tensor:
    """Calibrated float32 probabilities [batch, classes] of raw ones (`calibration` module docstring); the identity
    (an uncalibrated run) adds no ops, so such an export computes exactly as before calibration existed."""
    probabilities = tf.cast(probabilities, tf.float32)
    if calibration == Calibration.identity(len(calibration.scale), calibration.multi_label):
        return probabilities
    p = tf.clip_by_value(probabilities, EPSILON, 1 - EPSILON)
    scale = tf.constant(calibration.scale, tf.float32)
    offset = tf.constant(calibration.offset, tf.float32)
    if calibration.multi_label:
        return tf.sigmoid((tf.math.log(p) - tf.math.log(1 - p)) * scale + offset)
    return tf.nn.softmax(tf.math.log(p) * scale + offset, axis=-1)


def decision_outputs(calibrated: tf.Tensor, decision: Decision, class_names: tf.Tensor,
                     poor_signal: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """`present`, `present_names`, `confidence`, `reason` and `decision` (module docstring) of calibrated
    probabilities; `poor_signal` bool [batch], when given, makes those examples inconclusive."""
    classes = len(decision.calibration.scale)
    class_id = tf.argmax(calibrated, axis=-1, output_type=tf.int64)
    if decision.multi_label:
        present = calibrated >= tf.constant(decision.thresholds, tf.float32)
        confidence = tf.reduce_min(tf.where(present, calibrated, 1 - calibrated), axis=-1)
    else:
        present = tf.equal(tf.range(classes, dtype=tf.int64)[tf.newaxis], class_id[:, tf.newaxis])
        confidence = tf.reduce_max(calibrated, axis=-1)
    names = tf.strings.reduce_join(tf.where(present, tf.strings.join([class_names, ","]), ""), axis=-1)
    names = tf.strings.regex_replace(names, ",$", "")
    reason = tf.where(confidence < decision.abstain_below, LOW_CONFIDENCE, "")
    if poor_signal is not None:
        reason = tf.where(poor_signal, POOR_SIGNAL, reason)
    answer = tf.where(tf.equal(names, ""), NO_CLASS, names)
    return {
        "present": present,
        "present_names": names,
        "confidence": confidence,
        "reason": reason,
        "decision": tf.where(tf.equal(reason, ""), answer, INCONCLUSIVE),
    }


def record_outputs(probabilities: tf.Tensor, signal: tf.Tensor, sample_rate_hz: int, decision: Decision,
                   class_names: tf.Tensor) -> dict[str, tf.Tensor]:
    """Raw probabilities [batch, classes] of raw mV `signal` [batch, time, leads] at `sample_rate_hz` -> the
    calibrated `probabilities`, their argmax (`class_id`, `class_name`), the signal-quality gate's `bad_leads`,
    `heart_rate_bpm` and `signal_unreadable`, and `decision_outputs` (inconclusive where the signal is unreadable)."""
    calibrated = calibrate(probabilities, decision.calibration)
    class_id = tf.argmax(calibrated, axis=-1, output_type=tf.int64)
    quality = signal_quality(signal, sample_rate_hz)
    return {
        "probabilities": calibrated,
        "class_id": class_id,
        "class_name": tf.gather(class_names, class_id),
        "bad_leads": quality["bad_lead"],
        "heart_rate_bpm": quality["heart_rate_bpm"],
        "signal_unreadable": quality["unreadable"],
        **decision_outputs(calibrated, decision, class_names, poor_signal=quality["unreadable"]),
    }

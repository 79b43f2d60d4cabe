"""The seed's feature-based model: 12 hand-crafted ECG features computed in-graph, then a small dense net.

The features are built only from stock Keras layers and `keras.ops` (no custom layers, no Lambda), so the
model reloads from a .keras file with Keras alone, exports to a SavedModel and converts to TFLite builtins.
They are computed in float32 whatever the mixed-precision policy, on ONE lead: index `lead_index`, by default
1 (lead II, since datasets store leads in `records.standard_order`: I, II, ...) when there are at least two
leads, else 0. The input is z-scored per lead, so amplitudes are in z-units (standard deviations of the lead).

FEATURE_NAMES, in order:
  1. heart_rate_bpm        60 / rr_mean_s (0 when fewer than two beats are detected)
  2. rr_mean_s             mean interval between detected beats
  3. rr_std_s              standard deviation of the intervals (SDNN over the window)
  4. qrs_width_s           per beat, time within +-120 ms where the 40 ms-smoothed squared derivative exceeds
                           10% of the beat's maximum; averaged over beats (a heuristic QRS duration)
  5. r_amplitude_z         per beat, maximum within +-80 ms of the detection; averaged over beats
  6. s_amplitude_z         per beat, minimum within +-80 ms (the S, or Q, wave); averaged over beats
  7. st_level_z            per beat, signal (20 ms mean) 100 ms after minus 80 ms before the detection
  8. signal_energy_z2      mean squared signal over the window
  9. dominant_frequency_hz frequency of the largest bin of the 0.5-40 Hz power spectrum
 10. spectral_entropy      normalized Shannon entropy of that spectrum (0: one bin, 1: flat)
 11. low_band_ratio        power fraction in 0.5-5 Hz (P/T waves, rhythm)
 12. qrs_band_ratio        power fraction in 5-15 Hz (QRS energy)

R peaks (Pan-Tompkins style, all time constants from `sample_rate_hz`): central derivative, squared, 150 ms
moving-window integration (MWI); a sample is a beat when its MWI is the maximum over +-200 ms (the refractory
period; ties go to the first sample) and exceeds 30% of the window's largest MWI (adaptive threshold). Beat
times for the RR features are the centroid of the squared derivative within +-120 ms of each detection.
The spectrum is a Hann-windowed DFT over 2 s frames with 50% overlap (a fixed-weight strided Conv1D, so it
needs no FFT op), 0.5 Hz bins, summed over frames.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from ecg_tfx.models.cnn import probability_output, signal_input
from ecg_tfx.models.parts import HEAD_PREFIX, PYTORCH_BN

FEATURE_NAMES = (
    "heart_rate_bpm",
    "rr_mean_s",
    "rr_std_s",
    "qrs_width_s",
    "r_amplitude_z",
    "s_amplitude_z",
    "st_level_z",
    "signal_energy_z2",
    "dominant_frequency_hz",
    "spectral_entropy",
    "low_band_ratio",
    "qrs_band_ratio",
)
DEFAULT_DROPOUT = 0.3
DEFAULT_MAX_BEATS = 64  # beats used for rr_std_s when the window length is unknown
HIDDEN_UNITS = (64, 32)

_MWI_S = 0.150
_REFRACTORY_S = 0.200
_THRESHOLD = 0.3
_QRS_HALF_S = 0.080
_WIDTH_HALF_S = 0.120
_WIDTH_SMOOTH_S = 0.040
_WIDTH_FRACTION = 0.1
_ST_SMOOTH_S = 0.020
_ST_AFTER_S = 0.100
_BASELINE_BEFORE_S = 0.080
_FRAME_S = 2.0
_BIN_HZ = 1.0 / _FRAME_S
_MAX_HZ = 40.0
_LOW_BAND_HZ = 5.0
_QRS_BAND_HZ = 15.0
_EPS = 1e-9
_BIG = 1e9


def _samples(seconds: float, rate: float) -> int:
    return max(1, int(round(seconds * rate)))


def _shift(x: keras.KerasTensor, k: int) -> keras.KerasTensor:
    """y[:, t] = x[:, t + k] along axis 1, zero-filled (zero is the lead mean in z-units)."""
    if k > 0:
        return ops.pad(x, [[0, 0], [0, k], [0, 0]])[:, k:, :]
    return ops.pad(x, [[0, 0], [-k, 0], [0, 0]])[:, :k, :]


def _window_max(x: keras.KerasTensor, half: int) -> keras.KerasTensor:
    return ops.max_pool(x, 2 * half + 1, strides=1, padding="same")


def _moving_mean(x: keras.KerasTensor, width: int) -> keras.KerasTensor:
    return ops.average_pool(x, width, strides=1, padding="same")


def _beat_mean(values: keras.KerasTensor, beats: keras.KerasTensor, count: keras.KerasTensor) -> keras.KerasTensor:
    """Mean of `values` [B, T, 1] over beat samples (`beats` [B, T, 1] in {0, 1}); [B, 1], 0 with no beats."""
    return ops.sum(values * beats, axis=1) / ops.maximum(count, 1.0)


def _detect_beats(x: keras.KerasTensor, rate: float) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """R-peak indicator [B, T, 1] (float 0/1) and the squared derivative [B, T, 1]."""
    derivative = (_shift(x, 1) - _shift(x, -1)) * 0.5
    energy = ops.square(derivative)
    mwi = _moving_mean(energy, _samples(_MWI_S, rate) | 1)
    refractory = _samples(_REFRACTORY_S, rate)
    left_max = ops.max_pool(ops.pad(mwi, [[0, 0], [refractory, 0], [0, 0]]), refractory, strides=1)[:, :-1, :]
    threshold = _THRESHOLD * ops.max(mwi, axis=1, keepdims=True) + _EPS
    is_peak = (mwi >= _window_max(mwi, refractory)) & (mwi > left_max) & (mwi > threshold)
    return ops.cast(is_peak, "float32"), energy


def _beat_times(beats: keras.KerasTensor, energy: keras.KerasTensor, rate: float) -> keras.KerasTensor:
    """Per sample [B, T]: the centroid (in samples) of the squared derivative within +-120 ms.

    At detections this is a stable beat time: the MWI maximum itself wanders over the MWI plateau with noise.
    """
    position = ops.cumsum(ops.ones_like(energy), axis=1) - 1.0
    width = 2 * _samples(_WIDTH_HALF_S, rate) + 1
    centroid = _moving_mean(position * energy, width) / (_moving_mean(energy, width) + _EPS)
    return ops.where(beats > 0, centroid, position)[:, :, 0]


def _rhythm(
    beats: keras.KerasTensor, energy: keras.KerasTensor, rate: float, max_beats: int
) -> list[keras.KerasTensor]:
    """heart_rate_bpm, rr_mean_s, rr_std_s, each [B, 1]."""
    position = _beat_times(beats, energy, rate)
    beats = beats[:, :, 0]
    count = ops.sum(beats, axis=1, keepdims=True)
    first = ops.min(ops.where(beats > 0, position, _BIG), axis=1, keepdims=True)
    last = ops.max(position * beats, axis=1, keepdims=True)
    intervals = ops.maximum(count - 1.0, 0.0)
    rr_mean = (last - first) * ops.minimum(intervals, 1.0) / ops.maximum(intervals, 1.0) / rate
    heart_rate = ops.where(rr_mean > 0, 60.0 / ops.maximum(rr_mean, _EPS), 0.0)
    # The first `max_beats` beat positions, ascending (top_k of -position; padding keeps k <= length).
    score = ops.pad(ops.where(beats > 0, -position, -_BIG), [[0, 0], [0, max_beats]], constant_values=-_BIG)
    top, _ = ops.top_k(score, max_beats)
    valid = ops.cast(top > -_BIG / 2, "float32")
    pair = valid[:, 1:] * valid[:, :-1]
    rr = (top[:, :-1] - top[:, 1:]) * pair / rate
    pairs = ops.maximum(ops.sum(pair, axis=1, keepdims=True), 1.0)
    mean = ops.sum(rr, axis=1, keepdims=True) / pairs
    rr_std = ops.sqrt(ops.sum(ops.square(rr - mean) * pair, axis=1, keepdims=True) / pairs)
    return [heart_rate, rr_mean, rr_std]


def _morphology(
    x: keras.KerasTensor, beats: keras.KerasTensor, energy: keras.KerasTensor, rate: float
) -> list[keras.KerasTensor]:
    """qrs_width_s, r_amplitude_z, s_amplitude_z, st_level_z, signal_energy_z2, each [B, 1]."""
    count = ops.sum(beats, axis=1)
    smooth_energy = _moving_mean(energy, _samples(_WIDTH_SMOOTH_S, rate) | 1)
    width_half = _samples(_WIDTH_HALF_S, rate)
    above = ops.cast(smooth_energy > _WIDTH_FRACTION * _window_max(smooth_energy, width_half), "float32")
    width = _moving_mean(above, 2 * width_half + 1) * (2 * width_half + 1) / rate
    qrs_half = _samples(_QRS_HALF_S, rate)
    smooth = _moving_mean(x, _samples(_ST_SMOOTH_S, rate) | 1)
    st = _shift(smooth, _samples(_ST_AFTER_S, rate)) - _shift(smooth, -_samples(_BASELINE_BEFORE_S, rate))
    return [
        _beat_mean(width, beats, count),
        _beat_mean(_window_max(x, qrs_half), beats, count),
        -_beat_mean(_window_max(-x, qrs_half), beats, count),
        _beat_mean(st, beats, count),
        ops.mean(ops.square(x), axis=1),
    ]


def _dft_layer(rate: float) -> tuple[keras.layers.Conv1D, np.ndarray]:
    """Fixed strided Conv1D giving Hann-windowed DFT (cos, sin) of 2 s frames at 0.5 Hz bins, and bin freqs."""
    frame = _samples(_FRAME_S, rate)
    top_hz = min(_MAX_HZ, rate / 2.0 - _BIN_HZ)
    freqs = np.arange(_BIN_HZ, top_hz + _BIN_HZ / 2, _BIN_HZ)
    t = np.arange(frame) / rate
    window = np.hanning(frame)[:, None]
    phase = 2.0 * np.pi * t[:, None] * freqs[None, :]
    kernel = np.concatenate([window * np.cos(phase), window * np.sin(phase)], axis=1)[:, None, :]
    layer = keras.layers.Conv1D(
        kernel.shape[-1],
        frame,
        strides=max(1, frame // 2),
        padding="same",
        use_bias=False,
        trainable=False,
        dtype="float32",
        name="dft_frames",
    )
    layer.build((None, None, 1))
    layer.set_weights([kernel.astype(np.float32)])
    return layer, freqs


def _spectrum(x: keras.KerasTensor, rate: float) -> list[keras.KerasTensor]:
    """dominant_frequency_hz, spectral_entropy, low_band_ratio, qrs_band_ratio, each [B, 1]."""
    layer, freqs = _dft_layer(rate)
    bins = len(freqs)
    coefficients = layer(x)
    power = ops.sum(ops.square(coefficients[..., :bins]) + ops.square(coefficients[..., bins:]), axis=1)
    p = power / (ops.sum(power, axis=1, keepdims=True) + _EPS)
    # argmax lowers to a non-builtin BitwiseAnd in TFLite: average the frequencies of the maximal bin(s).
    is_max = ops.cast(power >= ops.max(power, axis=1, keepdims=True), "float32")
    bin_hz = ops.cumsum(ops.ones_like(power), axis=1) * _BIN_HZ
    dominant = ops.sum(is_max * bin_hz, axis=1, keepdims=True) / ops.sum(is_max, axis=1, keepdims=True)
    entropy = -ops.sum(p * ops.log(p + _EPS), axis=1, keepdims=True) / math.log(bins)
    low = int(np.searchsorted(freqs, _LOW_BAND_HZ))
    qrs = int(np.searchsorted(freqs, _QRS_BAND_HZ))
    return [
        dominant,
        entropy,
        ops.sum(p[:, :low], axis=1, keepdims=True),
        ops.sum(p[:, low:qrs], axis=1, keepdims=True),
    ]


def default_lead_index(num_leads: int) -> int:
    """Lead II (index 1 in standard order) when there are at least two leads, else the only lead."""
    return 1 if num_leads >= 2 else 0


def max_beats_for(window_samples: int | None, sample_rate_hz: float) -> int:
    """Upper bound on detectable beats: detections are more than one refractory period apart."""
    if window_samples is None:
        return DEFAULT_MAX_BEATS
    return window_samples // (_samples(_REFRACTORY_S, sample_rate_hz) + 1) + 1


def ecg_features(
    signal: keras.KerasTensor, sample_rate_hz: float, lead_index: int, max_beats: int = DEFAULT_MAX_BEATS
) -> keras.KerasTensor:
    """The 12 FEATURE_NAMES [batch, 12] (float32) of `signal` [batch, time, leads], from lead `lead_index`."""
    x = ops.cast(signal[:, :, lead_index : lead_index + 1], "float32")
    beats, energy = _detect_beats(x, sample_rate_hz)
    columns = (
        _rhythm(beats, energy, sample_rate_hz, max_beats)
        + _morphology(x, beats, energy, sample_rate_hz)
        + _spectrum(x, sample_rate_hz)
    )
    return keras.layers.Concatenate(dtype="float32", name="ecg_features")(columns)


def build_feature_extractor(
    num_leads: int, sample_rate_hz: float, window_samples: int | None = None, lead_index: int | None = None
) -> keras.Model:
    """Model mapping a signal [batch, time, leads] to its features [batch, 12] (no trainable weights)."""
    inputs = signal_input(num_leads, window_samples)
    lead = default_lead_index(num_leads) if lead_index is None else lead_index
    outputs = ecg_features(inputs, sample_rate_hz, lead, max_beats_for(window_samples, sample_rate_hz))
    return keras.Model(inputs, outputs, name="ecg_feature_extractor")


def build_features_model(
    num_leads: int,
    num_classes: int,
    multi_label: bool,
    sample_rate_hz: float,
    window_samples: int | None = None,
    dropout: float | None = None,
    lead_index: int | None = None,
) -> keras.Model:
    """Features -> BatchNormalization (features differ in scale by orders of magnitude) -> Dense(64) -> Dense(32)."""
    rate = DEFAULT_DROPOUT if dropout is None else dropout
    inputs = signal_input(num_leads, window_samples)
    lead = default_lead_index(num_leads) if lead_index is None else lead_index
    x = ecg_features(inputs, sample_rate_hz, lead, max_beats_for(window_samples, sample_rate_hz))
    # The body (the features) learns nothing: everything trainable is the head (`models.parts`).
    x = keras.layers.BatchNormalization(**PYTORCH_BN, dtype="float32", name=f"{HEAD_PREFIX}bn")(x)
    for i, units in enumerate(HIDDEN_UNITS):
        x = keras.layers.Dense(units, activation="relu", name=f"{HEAD_PREFIX}dense_{i}")(x)
        x = keras.layers.Dropout(rate, name=f"{HEAD_PREFIX}dropout_{i}")(x)
    outputs = probability_output(x, num_classes, multi_label)
    return keras.Model(inputs, outputs, name="features")

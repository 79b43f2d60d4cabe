"""Signal-quality gate: per-lead fault flags and a per-record verdict for a raw ECG batch, in stock TF ops.

`signal_quality(signal, sample_rate_hz)` takes the recording as it arrives, before any preprocessing:
[batch, time, leads] in mV at `sample_rate_hz` (a Python number: window lengths and DFT weights are constants of
the graph, as in `preprocessing`). Every op converts to TFLite builtins (matmul, pooling, reductions, top_k).

Per lead (each threshold below carries its unit and reason):
  flat              std < FLAT_STD_MV over the whole lead or over at least half of its 2-s frames (a
                    disconnected or zeroed lead, also one that drops out part-way)
  clipped           at least CLIP_MIN_RUNS runs of CLIP_RUN_S (or CLIP_LONG_S in all) within CLIP_TOLERANCE_MV of
                    the lead's maximum or minimum, when that extreme lies far from the lead's mean: a rail is
                    hit at every beat or for long; a natural peak touches its top once
  powerline_noise   power within +-1 Hz of 50 or 60 Hz over the power of the ECG band (ECG_BAND_HZ)
  emg_noise         power in EMG_BAND_HZ (mains and its harmonics left out) over the power of the ECG band
  baseline_artefact the baseline (a 0.5-s moving mean) travels more than BASELINE_TRAVEL_MV within 1 s
A flat lead is flagged as flat only; `bad_lead` is any flag. Spectra are Welch estimates: Hann-windowed, detrended
1-s frames (1-Hz bins), averaged; bands above the Nyquist frequency are left out (e.g. mains at 100 Hz sampling).

Per record: `heart_rate_bpm` is the median over leads of an R-peak rate; the record is `unreadable` when that
rate is outside [MIN_HEART_RATE_BPM, MAX_HEART_RATE_BPM] or when at least UNREADABLE_BAD_LEAD_FRACTION of its
leads are bad (12 leads: 3, as one loose limb electrode spoils 3-5 limb leads; one lead: that one). R peaks
follow the `features` model's Pan-Tompkins idea: squared central derivative, 150-ms moving mean (taken every
10 ms), a peak where that is the maximum within +-200 ms and above 30% of the lead's largest value. A single
lead's rate is too fragile to flag the lead (one step artefact hides every beat under the 30% threshold); the
median over leads is robust to a few such leads.

Mains and EMG are judged relative to the lead's own ECG power, flatness and motion in absolute mV. Choose
`sample_rate_hz` as the signal's own rate: resampled to 100 Hz, a signal has lost its mains and most of its EMG.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

FLAT_STD_MV = 0.01  # 10 uV: ten ADC steps of a 1-uV front end; the flattest clean lead seen had 28 uV
FLAT_FRAME_S = 2.0  # long enough to hold a beat at 30 bpm
FLAT_FRAME_FRACTION = 0.5  # a lead flat for half of the recording cannot be read
CLIP_TOLERANCE_MV = 0.005  # a few ADC steps (1 uV for PTB/PTB-XL, 5 uV for MIT-BIH): "at" the rail
CLIP_MIN_DEPARTURE = 0.3  # the extreme lies >= 30% of the lead's range from its mean: not a flat baseline
CLIP_RUN_S = 0.01  # 10 ms at one value: a clipped QRS; a natural peak stays within 5 uV of its top for less
CLIP_MIN_RUNS = 3  # repeated: PTB-XL ends hold their last value for up to 0.3 s, one run that may be the extreme
CLIP_LONG_S = 0.5  # or one long saturation, longer than those held ends
SPECTRUM_FRAME_S = 1.0  # 1-Hz bins: mains (which drifts by ~0.2 Hz) stays inside its +-1 Hz band
MAX_SPECTRUM_HZ = 150.0  # top of the analysed spectrum (most EMG power lies below it)
ECG_BAND_HZ = (1.0, 40.0)  # where a diagnostic ECG's power lies: the reference of the noise ratios
POWERLINE_HZ = (50.0, 60.0)  # mains in Europe, Asia, Africa / the Americas: either may reach a recording
POWERLINE_HALF_WIDTH_HZ = 1.0  # the 1-Hz bins either side catch the Hann window's spread and a drifting mains
EMG_BAND_HZ = (40.0, 150.0)  # muscle noise above the ECG band
POWERLINE_MAX_RATIO = 0.3  # mains over ECG power: a hum at a third of the ECG's power hides P waves (clean max 0.15)
EMG_MAX_RATIO = 0.3  # EMG over ECG power, likewise (clean PTB/PTB-XL leads: 99th percentile 0.1)
BASELINE_WINDOW_S = 0.5  # moving mean that keeps motion (below ~1 Hz) and averages the beats out
BASELINE_STEP_S = 0.01  # the baseline is sampled every 10 ms (it holds nothing faster)
BASELINE_SPAN_S = 1.0  # motion moves the baseline within a second; respiration takes 3-5 s per cycle
BASELINE_TRAVEL_MV = 3.0  # more than a large QRS within 1 s (clean leads: 99th percentile 1.1 mV)
MIN_HEART_RATE_BPM = 30.0  # below sustained human rhythms (complete heart block escapes at 30-40)
MAX_HEART_RATE_BPM = 240.0  # above sustained tachycardias; the 200-ms refractory period caps detection at 300
UNREADABLE_BAD_LEAD_FRACTION = 0.25  # 3 of 12 leads: what one loose limb electrode spoils at least
PEAK_STEP_S = 0.01  # R peaks are located to 10 ms: 0.1% of the rate over 10 s, at a cost independent of the rate
_MWI_S = 0.150
_REFRACTORY_S = 0.200
_PEAK_THRESHOLD = 0.3
_EPS = 1e-12

CHECKS = ("flat", "clipped", "powerline_noise", "emg_noise", "baseline_artefact")  # the per-lead flags


def _samples(seconds: float, rate: float) -> int:
    return max(1, int(round(seconds * rate)))


def _frames(x: tf.Tensor, frame: int) -> tf.Tensor:
    """[B, T, L] -> the whole frames [B, T // frame, frame, L] (a tail shorter than a frame is left out)."""
    shape = tf.shape(x)
    count = shape[1] // frame
    return tf.reshape(x[:, : count * frame, :], [shape[0], count, frame, x.shape[-1]])


def _pool(x: tf.Tensor, kind: str, width: int, padding: str = "SAME") -> tf.Tensor:
    return tf.nn.pool(x, [width], kind, strides=[1], padding=padding)


def _flat(x: tf.Tensor, rate: float) -> tf.Tensor:
    frame_std = tf.math.reduce_std(_frames(x, _samples(FLAT_FRAME_S, rate)), axis=2)  # [B, n, L]
    flat_frames = tf.reduce_sum(tf.cast(frame_std < FLAT_STD_MV, tf.float32), axis=1)
    fraction = flat_frames / tf.maximum(tf.cast(tf.shape(frame_std)[1], tf.float32), 1.0)
    return (tf.math.reduce_std(x, axis=1) < FLAT_STD_MV) | (fraction >= FLAT_FRAME_FRACTION)


def _clipping(x: tf.Tensor, rate: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs (of at least CLIP_RUN_S) and time (s) at the lead's maximum or minimum, each [B, L], the larger side.

    An extreme counts only when it lies CLIP_MIN_DEPARTURE of the range away from the lead's mean: a flat
    baseline that happens to be the minimum is no rail.
    """
    mean = tf.reduce_mean(x, axis=1, keepdims=True)
    top = tf.reduce_max(x, axis=1, keepdims=True)
    bottom = tf.reduce_min(x, axis=1, keepdims=True)
    reach = CLIP_MIN_DEPARTURE * (top - bottom)
    run = max(2, _samples(CLIP_RUN_S, rate))  # a single sample is no run (at 100 Hz, 10 ms is one)
    runs, seconds = [], []
    for at_extreme in ((x >= top - CLIP_TOLERANCE_MV) & (top - mean >= reach),
                       (x <= bottom + CLIP_TOLERANCE_MV) & (mean - bottom >= reach)):
        at = tf.cast(at_extreme, tf.float32)
        count = tf.cumsum(tf.pad(at, [[0, 0], [1, 0], [0, 0]]), axis=1)  # exact: integers below 2**24
        whole = tf.cast(count[:, run:, :] - count[:, :-run, :] >= run, tf.float32)  # `run` in a row start here
        starts = whole[:, 0, :] + tf.reduce_sum(tf.nn.relu(whole[:, 1:, :] - whole[:, :-1, :]), axis=1)
        runs.append(starts)
        seconds.append(tf.reduce_sum(at, axis=1) / rate)
    return tf.cast(tf.maximum(*runs), tf.int32), tf.maximum(*seconds)


def _band_matrix(rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The analysed frequencies [K] (Hz) and 0/1 columns [K, 4] summing them into ECG, 50 Hz, 60 Hz, EMG bands."""
    top_hz = min(MAX_SPECTRUM_HZ, rate / 2.0 - 1.0)
    freqs = np.arange(0.0, math.floor(top_hz) + 1.0)

    def band(low: float, high: float) -> np.ndarray:
        return (freqs >= low) & (freqs <= high)

    mains = [band(f - POWERLINE_HALF_WIDTH_HZ, f + POWERLINE_HALF_WIDTH_HZ) if f + POWERLINE_HALF_WIDTH_HZ <= top_hz
             else np.zeros_like(freqs, bool) for f in POWERLINE_HZ]
    harmonics = np.zeros_like(freqs, bool)
    for f in POWERLINE_HZ:
        for multiple in (f, 2 * f):
            harmonics |= band(multiple - 2 * POWERLINE_HALF_WIDTH_HZ, multiple + 2 * POWERLINE_HALF_WIDTH_HZ)
    emg = band(*EMG_BAND_HZ) & ~harmonics
    return freqs, np.stack([band(*ECG_BAND_HZ), *mains, emg], axis=1).astype(np.float32)


def _band_powers(x: tf.Tensor, rate: float) -> tf.Tensor:
    """[B, L, 4]: Welch power (arbitrary units) in the ECG, 50 Hz, 60 Hz and EMG bands of `_band_matrix`."""
    frame = _samples(SPECTRUM_FRAME_S, rate)
    freqs, bands = _band_matrix(rate)
    phase = 2.0 * np.pi * np.arange(frame)[:, None] * freqs[None, :] / rate
    window = np.hanning(frame)[:, None]
    basis = np.concatenate([window * np.cos(phase), window * np.sin(phase)], axis=1).astype(np.float32)
    frames = _frames(x, frame)
    frames = frames - tf.reduce_mean(frames, axis=2, keepdims=True)  # detrend: no DC leakage into the low bins
    rows = tf.reshape(tf.transpose(frames, [0, 1, 3, 2]), [-1, frame])  # [B * n * L, frame]
    coefficients = tf.matmul(rows, basis)
    power = tf.square(coefficients[:, : len(freqs)]) + tf.square(coefficients[:, len(freqs) :])
    per_band = tf.matmul(power, bands)  # [B * n * L, 4]
    shape = tf.shape(frames)
    per_band = tf.reshape(per_band, [shape[0], shape[1], x.shape[-1], bands.shape[1]])
    return tf.reduce_sum(per_band, axis=1) / tf.maximum(tf.cast(shape[1], tf.float32), 1.0)


def _baseline_travel_mv(x: tf.Tensor, rate: float) -> tf.Tensor:
    """[B, L]: the most (mV) the baseline, a BASELINE_WINDOW_S moving mean, moves within BASELINE_SPAN_S."""
    step = _samples(BASELINE_STEP_S, rate)
    baseline = tf.nn.pool(x, [_samples(BASELINE_WINDOW_S, rate)], "AVG", strides=[step], padding="VALID")
    span = max(1, _samples(BASELINE_SPAN_S, rate) // step)
    travel = _pool(baseline, "MAX", span) + _pool(-baseline, "MAX", span)
    return tf.reduce_max(travel, axis=1)


def _heart_rate_bpm(x: tf.Tensor, rate: float) -> tf.Tensor:
    """[B, L]: 60 / mean RR of the R peaks detected in each lead (0 with fewer than two peaks).

    The moving mean is taken every PEAK_STEP_S: peaks are then found on a 100-Hz envelope whatever the rate.
    """
    derivative = (x[:, 2:, :] - x[:, :-2, :]) * 0.5
    step = _samples(PEAK_STEP_S, rate)
    mwi = tf.nn.pool(tf.square(derivative), [_samples(_MWI_S, rate)], "AVG", strides=[step], padding="SAME")
    refractory = _samples(_REFRACTORY_S, rate / step)
    # Ties go to the first step: strictly above everything in the refractory period before it.
    left_max = _pool(tf.pad(mwi, [[0, 0], [refractory, 0], [0, 0]]), "MAX", refractory, "VALID")[:, :-1, :]
    threshold = _PEAK_THRESHOLD * tf.reduce_max(mwi, axis=1, keepdims=True) + _EPS
    is_peak = (mwi >= _pool(mwi, "MAX", 2 * refractory + 1)) & (mwi > left_max) & (mwi > threshold)
    peaks = tf.cast(is_peak, tf.float32)
    position = tf.cumsum(tf.ones_like(peaks), axis=1)
    first = tf.reduce_min(tf.where(is_peak, position, tf.float32.max), axis=1)
    last = tf.reduce_max(position * peaks, axis=1)
    intervals = tf.reduce_sum(peaks, axis=1) - 1.0
    return tf.where(intervals > 0, 60.0 * rate / step * intervals / tf.maximum(last - first, 1.0), 0.0)


def _median_over_leads(values: tf.Tensor) -> tf.Tensor:
    """[B, L] -> [B] (top_k sorts: a TFLite builtin)."""
    leads = values.shape[-1]
    ordered = tf.math.top_k(values, k=leads).values
    return 0.5 * (ordered[:, (leads - 1) // 2] + ordered[:, leads // 2])


def signal_quality(signal: tf.Tensor, sample_rate_hz: float) -> dict[str, tf.Tensor]:
    """Quality of raw ECG `signal` [batch, time, leads] (mV, finite; leads known when traced) at `sample_rate_hz`.

    Returns a dict of tensors (usable as signature outputs as it is). Per lead, [batch, leads]: the bool flags
    named in CHECKS and `bad_lead` (any of them); the measures behind them, float32 unless said: `std_mv`,
    `clip_runs` (int32) and `clipped_s`, `powerline_ratio` and `emg_ratio` (power over ECG-band power),
    `baseline_travel_mv`, `lead_heart_rate_bpm`. Per record, [batch]: `heart_rate_bpm` (float32),
    `bad_lead_count` (int32), `implausible_heart_rate` and `unreadable` (bool). Needs at least
    BASELINE_WINDOW_S of signal; the checks over 1-s and 2-s frames pass a record shorter than a frame.
    """
    rate = float(sample_rate_hz)
    x = tf.cast(tf.convert_to_tensor(signal), tf.float32)
    flat = _flat(x, rate)
    working = ~flat
    clip_runs, clipped_s = _clipping(x, rate)
    powers = _band_powers(x, rate)
    ecg_power = tf.maximum(powers[..., 0], _EPS)
    powerline_ratio = tf.maximum(powers[..., 1], powers[..., 2]) / ecg_power
    emg_ratio = powers[..., 3] / ecg_power
    travel = _baseline_travel_mv(x, rate)
    lead_rate = _heart_rate_bpm(x, rate)
    flags = {
        "flat": flat,
        "clipped": working & ((clip_runs >= CLIP_MIN_RUNS) | (clipped_s >= CLIP_LONG_S)),
        "powerline_noise": working & (powerline_ratio > POWERLINE_MAX_RATIO),
        "emg_noise": working & (emg_ratio > EMG_MAX_RATIO),
        "baseline_artefact": working & (travel > BASELINE_TRAVEL_MV),
    }
    bad_lead = tf.reduce_any(tf.stack(list(flags.values()), axis=-1), axis=-1)
    bad_lead_count = tf.reduce_sum(tf.cast(bad_lead, tf.int32), axis=-1)
    heart_rate = _median_over_leads(lead_rate)
    implausible = _implausible(heart_rate)
    too_many_bad = tf.cast(bad_lead_count, tf.float32) >= UNREADABLE_BAD_LEAD_FRACTION * x.shape[-1]
    return {
        **flags,
        "bad_lead": bad_lead,
        "std_mv": tf.math.reduce_std(x, axis=1),
        "clip_runs": clip_runs,
        "clipped_s": clipped_s,
        "powerline_ratio": powerline_ratio,
        "emg_ratio": emg_ratio,
        "baseline_travel_mv": travel,
        "lead_heart_rate_bpm": lead_rate,
        "heart_rate_bpm": heart_rate,
        "bad_lead_count": bad_lead_count,
        "implausible_heart_rate": implausible,
        "unreadable": implausible | too_many_bad,
    }


def _implausible(heart_rate_bpm: tf.Tensor) -> tf.Tensor:
    return (heart_rate_bpm < MIN_HEART_RATE_BPM) | (heart_rate_bpm > MAX_HEART_RATE_BPM)

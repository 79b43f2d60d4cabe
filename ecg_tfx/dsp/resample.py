"""In-graph polyphase resampling that reproduces `scipy.signal.resample_poly`.

The exported model calls `resample` first, so a caller may send an ECG at any integer sample rate and the
model still sees exactly what training saw (records resampled offline with scipy's `resample_poly`). Every
step runs in stock TensorFlow ops with the input rate as a runtime tensor: the gcd, the Kaiser-windowed sinc
filter (`firwin(20 * max(up, down) + 1, 1 / max(up, down), window=("kaiser", 5.0))`, scaled by `up`) and the
filtering itself.

Filtering is polyphase: with `up`/`down` coprime, output `n = m * up + s` is
`sum_v h[s * down - v * up] * x[m * down + v]`. Cutting the (zero-padded) input into blocks of `down` samples
makes that one stride-1 `conv1d` from `down` input channels to `up` output channels, so each output sample
costs about `20 * max(up, down) / up + down` multiply-adds and nothing is upsampled in memory.
"""

from __future__ import annotations

import tensorflow as tf

KAISER_BETA = 5.0  # scipy.signal.resample_poly's default window ("kaiser", 5.0)
_HALF_LEN_PER_RATE = 10  # scipy: half_len = 10 * max(up, down)
_PI = 3.141592653589793


def resample(signal: tf.Tensor, rate_in: tf.Tensor | int, rate_out: int) -> tf.Tensor:
    """Resamples float `signal` [batch, time, leads] from integer `rate_in` Hz to `rate_out` Hz.

    Matches `scipy.signal.resample_poly(x, rate_out / g, rate_in / g, axis=1)` (g = gcd), including its
    output length `ceil(time * up / down)` and zero padding beyond both ends. Returns float32.
    """
    signal = tf.cast(tf.convert_to_tensor(signal), tf.float32)
    rate_in = tf.cast(tf.convert_to_tensor(rate_in), tf.int64)
    tf.debugging.assert_positive(rate_in, message="rate_in must be a positive integer")
    if rate_out <= 0:
        raise ValueError(f"rate_out must be positive, got {rate_out}")
    divisor = _gcd(rate_in, tf.constant(rate_out, tf.int64))
    up = tf.constant(rate_out, tf.int64) // divisor
    down = rate_in // divisor
    return tf.cond(
        tf.equal(up, down),
        lambda: tf.identity(signal),
        lambda: _resample_poly(signal, up, down),
    )


def _gcd(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Greatest common divisor of two positive int64 scalars (Euclid's algorithm in graph ops)."""
    _, result = tf.while_loop(
        lambda rem, _: tf.not_equal(rem, 0),
        lambda rem, div: (tf.math.floormod(div, rem), rem),
        (b, a),
    )
    return result


def lowpass_taps(up: tf.Tensor, down: tf.Tensor) -> tf.Tensor:
    """scipy's resample_poly filter for coprime `up`/`down`, float64, length `2 * half_len + 1`.

    `firwin` normalizes the windowed sinc to unit DC gain; resample_poly then multiplies by `up` to make up
    for the zeros that upsampling inserts.
    """
    max_rate = tf.maximum(up, down)
    half_len = _HALF_LEN_PER_RATE * max_rate
    offsets = tf.cast(tf.range(-half_len, half_len + 1), tf.float64)
    cutoff = 1.0 / tf.cast(max_rate, tf.float64)
    sinc_arg = cutoff * offsets
    safe_arg = tf.where(tf.equal(sinc_arg, 0.0), tf.ones_like(sinc_arg), sinc_arg)
    sinc = tf.where(tf.equal(sinc_arg, 0.0), tf.ones_like(sinc_arg), tf.sin(_PI * safe_arg) / (_PI * safe_arg))
    taps = cutoff * sinc * _kaiser(offsets / tf.cast(half_len, tf.float64))
    return taps / tf.reduce_sum(taps) * tf.cast(up, tf.float64)


def _kaiser(position: tf.Tensor) -> tf.Tensor:
    """Kaiser window at `position` in [-1, 1], up to a constant factor (it cancels in the normalization).

    I0(beta * r) / I0(beta) == i0e(beta * r) / i0e(beta) * exp(beta * (r - 1)); the constant
    1 / i0e(beta) is dropped.
    """
    r = tf.sqrt(tf.maximum(1.0 - tf.square(position), 0.0))
    arg = KAISER_BETA * r
    return tf.math.bessel_i0e(arg) * tf.exp(arg - KAISER_BETA)


def _polyphase_bank(taps: tf.Tensor, up: tf.Tensor, down: tf.Tensor, lead_in: tf.Tensor) -> tf.Tensor:
    """conv1d filters [blocks, down, up]: bank[b, d, s] = h[s * down - (b * down + d - lead_in) * up].

    `lead_in` is how many zeros precede the signal in the blocked input; taps outside the filter are 0.
    """
    half_len = (tf.size(taps, out_type=tf.int64) - 1) // 2
    # Input offsets v relative to m * down that any phase s touches: v in [-lead_in, max_offset].
    max_offset = ((up - 1) * down + half_len) // up
    blocks = (lead_in + max_offset + down) // down  # ceil((lead_in + max_offset + 1) / down)
    block = tf.range(blocks)[:, None, None]
    within = tf.range(down)[None, :, None]
    phase = tf.range(up)[None, None, :]
    index = phase * down - (block * down + within - lead_in) * up
    inside = tf.abs(index) <= half_len
    values = tf.gather(taps, tf.clip_by_value(index + half_len, 0, 2 * half_len))
    return tf.cast(tf.where(inside, values, tf.zeros_like(values)), tf.float32)


def _resample_poly(signal: tf.Tensor, up: tf.Tensor, down: tf.Tensor) -> tf.Tensor:
    """Polyphase resampling of [batch, time, leads] by coprime up/down (see module docstring)."""
    shape = tf.shape(signal, out_type=tf.int64)
    batch, n_in, leads = shape[0], shape[1], shape[2]
    n_out = (n_in * up + down - 1) // down
    taps = lowpass_taps(up, down)
    half_len = (tf.size(taps, out_type=tf.int64) - 1) // 2
    lead_in = half_len // up  # zeros before x[0]: the most negative offset any phase reads
    bank = _polyphase_bank(taps, up, down, lead_in)
    blocks_out = (n_out + up - 1) // up
    blocks_in = blocks_out + tf.shape(bank, out_type=tf.int64)[0] - 1
    total_in = blocks_in * down
    # Leads go to the batch axis: each lead is filtered on its own, one channel of `down` block samples.
    rows = tf.reshape(tf.transpose(signal, [0, 2, 1]), tf.stack([batch * leads, n_in]))
    tail = tf.maximum(total_in - lead_in - n_in, 0)
    padded = tf.pad(rows, tf.stack([tf.constant([0, 0], tf.int64), tf.stack([lead_in, tail])]))
    blocked = tf.reshape(padded[:, :total_in], tf.stack([batch * leads, blocks_in, down]))
    phases = tf.nn.conv1d(blocked, bank, stride=1, padding="VALID")  # [rows, blocks_out, up]
    out = tf.reshape(phases, tf.stack([batch * leads, blocks_out * up]))[:, :n_out]
    return tf.transpose(tf.reshape(out, tf.stack([batch, leads, n_out])), [0, 2, 1])

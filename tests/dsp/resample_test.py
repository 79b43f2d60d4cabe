"""Tests for ecg_tfx.resample: parity with scipy.signal.resample_poly from a runtime rate, in graph mode."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.signal
import tensorflow as tf
from graph_ops import stock_op_types

from ecg_tfx.dsp.resample import lowpass_taps, resample


@functools.cache
def graph_resampler(rate_out: int) -> tf.types.experimental.ConcreteFunction:
    """One traced function for every input rate and shape: the rate is a runtime tensor."""
    fn = tf.function(lambda x, rate: resample(x, rate, rate_out))
    return fn.get_concrete_function(tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([], tf.int32))


def ecg_like(length: int, leads: int, seed: int) -> np.ndarray:
    """[2, length, leads] with a drifting baseline, sharp spikes and noise (energy up to Nyquist)."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 0.02, (2, length, leads)), axis=1) + rng.normal(0, 0.05, (2, length, leads))
    x[:, ::97] += 1.5  # QRS-like spikes
    return x


@pytest.mark.parametrize("rate_in,rate_out", [(1000, 500), (500, 100), (360, 500), (250, 500), (500, 500)])
@pytest.mark.parametrize("length", [2501, 10])
def test_equals_scipy_resample_poly(rate_in: int, rate_out: int, length: int) -> None:
    x = ecg_like(length, 3, seed=rate_in + length)
    divisor = math.gcd(rate_in, rate_out)
    expected = scipy.signal.resample_poly(x, rate_out // divisor, rate_in // divisor, axis=1)
    got = graph_resampler(rate_out)(tf.constant(x, tf.float32), tf.constant(rate_in)).numpy()
    assert got.shape == expected.shape == (2, math.ceil(length * rate_out / rate_in), 3)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(x).max())


def test_output_length_is_ceil_of_ratio_for_short_inputs() -> None:
    fn = graph_resampler(500)
    for length in (1, 2, 3, 7):
        for rate_in in (1000, 360, 44):
            out = fn(tf.ones([1, length, 2]), tf.constant(rate_in))
            assert out.shape[1] == math.ceil(length * 500 / rate_in)


@pytest.mark.parametrize("up,down", [(1, 2), (1, 5), (25, 18), (2, 1), (3, 7)])
def test_filter_equals_scipy_firwin(up: int, down: int) -> None:
    half_len = 10 * max(up, down)
    expected = scipy.signal.firwin(2 * half_len + 1, 1 / max(up, down), window=("kaiser", 5.0)) * up
    got = lowpass_taps(tf.constant(up, tf.int64), tf.constant(down, tf.int64)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_only_stock_ops() -> None:
    types = stock_op_types(graph_resampler(500))
    assert "Conv2D" in types and "BesselI0e" in types  # conv1d lowers to Conv2D
    assert not [op for op in types if not hasattr(tf.raw_ops, op)]


def test_rejects_non_positive_rate() -> None:
    with pytest.raises(tf.errors.InvalidArgumentError):
        graph_resampler(500)(tf.ones([1, 10, 1]), tf.constant(0))

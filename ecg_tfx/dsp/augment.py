"""Random training augmentations of ECG batches, in stock TF ops (training input pipeline only).

Order: the input pipeline applies `augment` AFTER `preprocessing.preprocess` and after the cache, so the
costly filter runs once per window rather than once per epoch. Amplitudes (noise, wander) are therefore in
standardized units (1.0 = one standard deviation of the lead), and a dropped lead is zero like a flat lead
after standardization. Augmentation is for training only; serving never sees it.

Randomness is stateless: the same `seed` gives the same augmentation, so runs are reproducible. The training
pipeline seeds each example's draws with `example_seed(seed, epoch, example)`: fresh in every epoch, the same in
a rerun, and independent of where the example lands in a batch or on which worker. `seed=None` draws a seed
from TF's global generator (not reproducible).
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

_NUM_STREAMS = 6  # independent random streams: crop, shift, scale, wander, noise, dropout


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply and how strongly; each one is off at its neutral value."""

    crop_samples: int | None = None  # random crop to this many samples (None: keep the length)
    max_shift_samples: int = 0  # random time shift in [-max, max], edge samples repeated into the gap
    scale_range: tuple[float, float] | None = (0.9, 1.1)  # per-example gain, uniform (None or (1, 1): off)
    noise_std: float = 0.0  # white Gaussian noise std (standardized units)
    wander_amplitude: float = 0.0  # max amplitude of an added low-frequency sinusoid per lead (standardized units)
    wander_freq_hz: tuple[float, float] = (0.05, 0.5)  # wander frequency range (respiration, movement)
    lead_dropout: float = 0.0  # probability that each lead of each example is zeroed
    sample_rate_hz: float = 500.0  # rate of the signal `augment` receives (for the wander frequency)

    def __post_init__(self) -> None:
        if self.crop_samples is not None and self.crop_samples <= 0:
            raise ValueError(f"crop_samples must be positive, got {self.crop_samples}")
        if self.max_shift_samples < 0 or self.noise_std < 0 or self.wander_amplitude < 0:
            raise ValueError("max_shift_samples, noise_std and wander_amplitude must be >= 0")
        if not 0.0 <= self.lead_dropout < 1.0:
            raise ValueError(f"lead_dropout must be in [0, 1), got {self.lead_dropout}")
        if self.scale_range is not None and not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")


def augment(signal: tf.Tensor, config: AugmentConfig, seed: int | tf.Tensor | None = None) -> tf.Tensor:
    """Randomly augments float `signal` [batch, time, leads]; returns float32 [batch, crop or time, leads].

    `seed` is an int or an int shape-[2] tensor for stateless randomness, or None for a fresh random seed.
    """
    signal = tf.cast(tf.convert_to_tensor(signal), tf.float32)
    seeds = tf.random.experimental.stateless_split(_seed_pair(seed), _NUM_STREAMS)
    batch = tf.shape(signal)[0]
    leads = tf.shape(signal)[2]
    if config.crop_samples is not None:
        signal = random_crop(signal, config.crop_samples, seeds[0])
    if config.max_shift_samples > 0:
        signal = random_shift(signal, config.max_shift_samples, seeds[1])
    if config.scale_range is not None and config.scale_range != (1.0, 1.0):
        low, high = config.scale_range
        signal = signal * tf.random.stateless_uniform(tf.stack([batch, 1, 1]), seeds[2], low, high)
    if config.wander_amplitude > 0:
        signal = signal + baseline_wander(tf.shape(signal), config, seeds[3])
    if config.noise_std > 0:
        signal = signal + tf.random.stateless_normal(tf.shape(signal), seeds[4], stddev=config.noise_std)
    if config.lead_dropout > 0:
        keep = tf.random.stateless_uniform(tf.stack([batch, 1, leads]), seeds[5]) >= config.lead_dropout
        signal = signal * tf.cast(keep, tf.float32)
    return signal


def example_seed(seed: int, epoch: int | tf.Tensor, example: int | tf.Tensor) -> tf.Tensor:
    """The stateless seed (int64 [2]) of one example's draws in one epoch; distinct for every (seed, epoch, example)."""
    fold_in = tf.random.experimental.stateless_fold_in
    return fold_in(fold_in(tf.constant([0, seed], tf.int64), tf.cast(epoch, tf.int64)), tf.cast(example, tf.int64))


def _seed_pair(seed: int | tf.Tensor | None) -> tf.Tensor:
    """A shape-[2] int64 seed for the stateless ops."""
    if seed is None:
        return tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    if isinstance(seed, int):
        return tf.constant([0, seed], tf.int64)
    return tf.cast(tf.reshape(seed, [2]), tf.int64)


def random_crop(signal: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
    """A window of `length` samples from each example, each at its own uniform random start."""
    time = tf.shape(signal)[1]
    tf.debugging.assert_greater_equal(time, length, message="signal is shorter than crop_samples")
    starts = tf.random.stateless_uniform(tf.shape(signal)[:1], seed, 0, time - length + 1, dtype=tf.int32)
    indices = starts[:, None] + tf.range(length)[None, :]
    return tf.gather(signal, indices, axis=1, batch_dims=1)


def random_shift(signal: tf.Tensor, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
    """Delays (positive) or advances each example by up to `max_shift` samples, repeating its edge sample."""
    time = tf.shape(signal)[1]
    shifts = tf.random.stateless_uniform(tf.shape(signal)[:1], seed, -max_shift, max_shift + 1, dtype=tf.int32)
    indices = tf.clip_by_value(tf.range(time)[None, :] - shifts[:, None], 0, time - 1)
    return tf.gather(signal, indices, axis=1, batch_dims=1)


def baseline_wander(shape: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Sinusoidal wander [batch, time, leads]: one frequency per example, amplitude and phase per lead."""
    batch, time, leads = shape[0], shape[1], shape[2]
    freq_seed, amp_seed, phase_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    low, high = config.wander_freq_hz
    freq = tf.random.stateless_uniform(tf.stack([batch, 1, 1]), freq_seed, low, high)
    amplitude = tf.random.stateless_uniform(tf.stack([batch, 1, leads]), amp_seed, 0.0, config.wander_amplitude)
    phase = tf.random.stateless_uniform(tf.stack([batch, 1, leads]), phase_seed, 0.0, 2 * math.pi)
    seconds = tf.cast(tf.range(time), tf.float32)[None, :, None] / config.sample_rate_hz
    return amplitude * tf.sin(2 * math.pi * freq * seconds + phase)

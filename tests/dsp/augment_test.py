"""Tests for ecg_tfx.augment: each augmentation does what it says, and switched off it does nothing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import tensorflow as tf

from ecg_tfx.dsp.augment import AugmentConfig, augment, example_seed

OFF = AugmentConfig(scale_range=None)  # every augmentation at its neutral value


def signal(batch: int = 8, length: int = 1000, leads: int = 12) -> np.ndarray:
    """A distinct ramp per example and lead, so any sample's origin can be traced back."""
    t = np.arange(length, dtype=np.float32)[None, :, None]
    return t + 10_000 * np.arange(batch, dtype=np.float32)[:, None, None] + 0.5 * np.arange(leads)[None, None, :]


def test_disabled_config_is_identity() -> None:
    x = signal()
    np.testing.assert_array_equal(augment(x, OFF, seed=1).numpy(), x)
    np.testing.assert_array_equal(augment(x, AugmentConfig(scale_range=(1.0, 1.0)), seed=1).numpy(), x)


def test_random_crop_takes_contiguous_windows_at_varied_starts() -> None:
    x = signal(batch=16)
    out = augment(x, AugmentConfig(crop_samples=300, scale_range=None), seed=3).numpy()
    assert out.shape == (16, 300, 12)
    starts = out[:, 0, 0] - x[:, 0, 0]  # the ramp value tells where each crop began
    assert np.all((starts >= 0) & (starts <= 700))
    np.testing.assert_array_equal(out, np.stack([x[i, int(s) : int(s) + 300] for i, s in enumerate(starts)]))
    assert len(set(starts.tolist())) > 8


def test_random_shift_moves_each_example_and_repeats_edge() -> None:
    x = signal(batch=32)
    out = augment(x, AugmentConfig(max_shift_samples=50, scale_range=None), seed=4).numpy()
    shifts = x[:, 500, 0] - out[:, 500, 0]  # delay by s: out[t] = x[t - s]
    assert np.all(np.abs(shifts) <= 50) and len(set(shifts.tolist())) > 10
    for example, shift in enumerate(shifts.astype(int)):
        indices = np.clip(np.arange(1000) - shift, 0, 999)
        np.testing.assert_array_equal(out[example], x[example, indices])


def test_scale_is_one_gain_per_example_within_range() -> None:
    x = signal(batch=64) + 1.0
    out = augment(x, AugmentConfig(scale_range=(0.8, 1.2)), seed=5).numpy()
    gains = out / x
    np.testing.assert_allclose(gains, gains[:, :1, :1] * np.ones_like(gains), rtol=1e-6)  # same for all t, leads
    assert gains.min() >= 0.8 and gains.max() <= 1.2 and gains[:, 0, 0].std() > 0.05


def test_noise_has_requested_std_and_zero_mean() -> None:
    x = signal(batch=4, length=5000)
    noise = augment(x, AugmentConfig(noise_std=0.05, scale_range=None), seed=6).numpy() - x
    assert abs(noise.std() - 0.05) < 0.002 and abs(noise.mean()) < 0.002


def test_wander_is_slow_bounded_sinusoid_per_lead() -> None:
    rate = 500.0
    config = AugmentConfig(wander_amplitude=0.8, wander_freq_hz=(0.1, 0.3), sample_rate_hz=rate, scale_range=None)
    x = np.zeros((4, 5000, 12), np.float32)
    wander = augment(x, config, seed=7).numpy()
    assert np.abs(wander).max() <= 0.8 and wander.std() > 0.1
    freqs, power = scipy.signal.periodogram(wander, fs=rate, window="hann", axis=1)
    assert np.all(power[:, freqs > 1.0].sum(axis=1) < 1e-3 * power.sum(axis=1))  # all energy below 1 Hz
    assert not np.allclose(wander[:, :, 0], wander[:, :, 1])  # leads get their own amplitude and phase


def test_lead_dropout_zeroes_whole_leads_at_rate() -> None:
    x = signal(batch=200, length=50) + 1.0
    out = augment(x, AugmentConfig(lead_dropout=0.25, scale_range=None), seed=8).numpy()
    dropped = np.all(out == 0, axis=1)  # [batch, leads]
    kept = np.broadcast_to(~dropped[:, None, :], out.shape)
    np.testing.assert_array_equal(out[kept], x[kept])
    assert 0.2 < dropped.mean() < 0.3


def test_seeded_is_reproducible_and_seeds_differ() -> None:
    config = AugmentConfig(crop_samples=500, max_shift_samples=20, noise_std=0.1, lead_dropout=0.2)
    x = signal()
    np.testing.assert_array_equal(augment(x, config, seed=1).numpy(), augment(x, config, seed=1).numpy())
    assert not np.array_equal(augment(x, config, seed=1).numpy(), augment(x, config, seed=2).numpy())
    assert augment(x, config, seed=None).shape == (8, 500, 12)


def test_example_seeds_give_fresh_draws_each_epoch_and_repeat_in_a_rerun() -> None:
    """Seeded by (seed, epoch, example), not by the batch position: each epoch draws afresh for every example."""
    config = AugmentConfig(crop_samples=400, noise_std=0.1, wander_amplitude=0.5)
    x = signal(batch=6)

    def run(seed: int) -> list[np.ndarray]:  # one list entry per epoch: its 6 augmented examples, in order
        def one_epoch(epoch):
            examples = tf.data.Dataset.from_tensor_slices(x).enumerate()
            return examples.map(lambda i, example: augment(example[None], config, example_seed(seed, epoch, i))[0])
        dataset = tf.data.Dataset.range(1, 3).flat_map(one_epoch).batch(6)
        return [batch.numpy() for batch in dataset]

    epoch1, epoch2 = run(seed=42)
    assert epoch1.shape == epoch2.shape == (6, 400, 12)
    for example in range(6):
        assert not np.allclose(epoch1[example], epoch2[example])  # the same example, new draws
    for again, first in zip(run(seed=42), (epoch1, epoch2)):
        np.testing.assert_array_equal(again, first)  # a rerun with the same seed repeats both epochs
    assert not np.allclose(run(seed=43)[0], epoch1)
    assert np.array_equal(example_seed(42, 1, 0), example_seed(42, 1, 0))
    assert len({tuple(example_seed(42, e, i).numpy()) for e in range(3) for i in range(3)}) == 9


def test_invalid_config_rejected() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(lead_dropout=1.0)
    with pytest.raises(ValueError):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(tf.errors.InvalidArgumentError):
        augment(signal(length=100), AugmentConfig(crop_samples=200), seed=0)

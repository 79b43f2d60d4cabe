"""Tests for ecg_tfx.dsp.quality: faults injected into real PTB and PTB-XL records are flagged on the right lead
and as the right kind, clean and mildly disturbed records are not, and TFLite (builtins only) computes the same."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest
import scipy.signal
import tensorflow as tf
from graph_ops import stock_op_types

from ecg_tfx.dsp.quality import CHECKS, signal_quality

wfdb = pytest.importorskip("wfdb")
pytest.importorskip("wfdb.processing")

# Unannotated PTB-XL records (63, 74 and 140 bpm) at 500 Hz and a PTB record at 1000 Hz, 10 s each.
PTBXL_IDS = (3, 14, 20)
PTB_RECORD = "patient001/s0010_re"
DURATION_S = 10


def read_ptbxl(ptbxl_dir: pathlib.Path, ecg_id: int, rate: int = 500) -> tuple[np.ndarray, float]:
    kind = "hr" if rate == 500 else "lr"
    record = wfdb.rdrecord(str(ptbxl_dir / f"records{rate}" / f"{ecg_id // 1000 * 1000:05d}" / f"{ecg_id:05d}_{kind}"))
    return record.p_signal.astype(np.float32), float(record.fs)


@pytest.fixture(scope="module")
def records(ptb_dir: pathlib.Path, ptbxl_dir: pathlib.Path) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (signal [time, 12] mV, sample rate Hz)."""
    chosen = {f"ptbxl/{ecg_id}": read_ptbxl(ptbxl_dir, ecg_id) for ecg_id in PTBXL_IDS}
    ptb = wfdb.rdrecord(str(ptb_dir / PTB_RECORD), channels=list(range(12)), sampto=DURATION_S * 1000)
    chosen[f"ptb/{PTB_RECORD}"] = (ptb.p_signal.astype(np.float32), float(ptb.fs))
    return chosen


def quality(signal: np.ndarray, rate: float) -> dict[str, np.ndarray]:
    """The gate on one record [time, leads], outputs without the batch axis."""
    return {name: value.numpy()[0] for name, value in signal_quality(signal[None], rate).items()}


def flagged(result: dict[str, np.ndarray]) -> set[tuple[int, str]]:
    return {(int(lead), check) for check in CHECKS for lead in np.flatnonzero(result[check])}


def band_noise(length: int, rate: float, band_hz: tuple[float, float], seed: int) -> np.ndarray:
    """Unit-RMS Gaussian noise band-passed to `band_hz` (4th-order Butterworth, zero phase)."""
    sos = scipy.signal.butter(4, band_hz, "bandpass", fs=rate, output="sos")
    noise = scipy.signal.sosfiltfilt(sos, np.random.default_rng(seed).normal(size=length))
    return noise / noise.std()


def motion(length: int, rate: float, shift_mv: float) -> np.ndarray:
    """Electrode motion: at 3 s and 7 s the baseline jumps by `shift_mv` within 0.2 s, then recovers (tau 1 s)."""
    t = np.arange(length) / rate
    artefact = np.zeros(length)
    for onset in (3.0, 7.0):
        since = t - onset
        rise = np.clip(since / 0.2, 0.0, 1.0)
        artefact += shift_mv * rise * np.exp(-np.clip(since - 0.2, 0.0, None) / 1.0)
    return artefact


def inject(lead: np.ndarray, fault: str, rate: float, strength: float = 1.0) -> np.ndarray:
    """`lead` [time] (mV) with `fault`; `strength` 1 is a lead no reader could use, small values a mild one."""
    rms = lead.std()
    t = np.arange(len(lead)) / rate
    if fault == "flat":
        return lead * (1.0 - strength)  # strength 1: the lead reads zero (disconnected)
    if fault == "clipped":  # an amplifier rail at 40% of the way from the lead's mean to its extremes
        mean = lead.mean()
        return np.clip(lead, mean - 0.4 * (mean - lead.min()), mean + 0.4 * (lead.max() - mean))
    if fault == "powerline_noise":  # 50 Hz with the lead's own RMS times `strength`
        return lead + strength * rms * np.sqrt(2) * np.sin(2 * np.pi * 50.0 * t + 0.3)
    if fault == "emg_noise":  # muscle noise, 20-150 Hz, with the lead's own RMS times `strength`
        return lead + strength * rms * band_noise(len(lead), rate, (20.0, 150.0), seed=7)
    if fault == "baseline_artefact":  # two 5-mV electrode shifts
        return lead + motion(len(lead), rate, 5.0 * strength)
    raise ValueError(fault)


def test_clean_records_pass_with_their_heart_rate(records) -> None:
    for name, (signal, rate) in records.items():
        result = quality(signal, rate)
        assert flagged(result) == set(), name
        assert not result["unreadable"] and result["bad_lead_count"] == 0, name
        # The reference: wfdb's XQRS detector on lead II at 500 Hz (at 1000 Hz it misses PTB's beats).
        lead_ii = scipy.signal.resample_poly(signal[:, 1], 500, int(rate))
        beats = wfdb.processing.xqrs_detect(lead_ii, fs=500, verbose=False)
        reference_bpm = 60.0 * 500 * (len(beats) - 1) / (beats[-1] - beats[0])
        assert result["heart_rate_bpm"] == pytest.approx(reference_bpm, rel=0.03), name


def test_clean_records_at_100_hz_pass(ptbxl_dir: pathlib.Path) -> None:
    """PTB-XL's 100-Hz versions: mains lies at or above Nyquist there, and a clipped run needs two samples."""
    for ecg_id in PTBXL_IDS:
        signal, rate = read_ptbxl(ptbxl_dir, ecg_id, rate=100)
        result = quality(signal, rate)
        assert flagged(result) == set() and not result["unreadable"], ecg_id
        assert result["heart_rate_bpm"] == pytest.approx(quality(*read_ptbxl(ptbxl_dir, ecg_id))["heart_rate_bpm"],
                                                         rel=0.03)


@pytest.mark.parametrize("fault", CHECKS)
def test_each_fault_is_flagged_on_its_lead_only(records, fault: str) -> None:
    for index, (name, (signal, rate)) in enumerate(records.items()):
        lead = (3 * index + 2 * CHECKS.index(fault)) % 12  # a different lead for each record and fault
        faulty = signal.copy()
        faulty[:, lead] = inject(signal[:, lead], fault, rate)
        result = quality(faulty, rate)
        assert flagged(result) == {(lead, fault)}, name
        assert result["bad_lead_count"] == 1 and not result["unreadable"], name


@pytest.mark.parametrize("fault", ["flat", "powerline_noise", "emg_noise", "baseline_artefact"])
def test_a_mild_disturbance_passes(records, fault: str) -> None:
    """A lead at a third of its voltage, a hum or EMG at a tenth of its RMS (-20 dB), two 1.5-mV electrode shifts."""
    strength = {"flat": 2 / 3, "powerline_noise": 0.1, "emg_noise": 0.1, "baseline_artefact": 0.3}[fault]
    for name, (signal, rate) in records.items():
        disturbed = signal.copy()
        disturbed[:, 4] = inject(signal[:, 4], fault, rate, strength)
        assert flagged(quality(disturbed, rate)) == set(), name


@pytest.mark.parametrize("lost_fraction, flat", [(0.6, True), (0.3, False)])
def test_a_lead_lost_part_way_is_flat_when_lost_for_half_the_record(records, lost_fraction: float, flat: bool) -> None:
    for name, (signal, rate) in records.items():
        lost = signal.copy()
        lost[int(len(lost) * (1 - lost_fraction)) :, 6] = 0.0
        assert flagged(quality(lost, rate)) == ({(6, "flat")} if flat else set()), name


def test_three_bad_leads_of_twelve_make_a_record_unreadable(records) -> None:
    signal, rate = records["ptbxl/3"]
    disconnected = signal.copy()
    disconnected[:, [0, 2]] = 0.0
    result = quality(disconnected, rate)
    assert result["bad_lead_count"] == 2 and not result["unreadable"]
    disconnected[:, 3] = 0.0
    result = quality(disconnected, rate)
    assert result["bad_lead_count"] == 3 and result["unreadable"]


@pytest.mark.parametrize("claimed_factor, implausible", [(1 / 2, False), (1 / 3, True)])
def test_a_wrong_sample_rate_gives_an_implausible_heart_rate(records, claimed_factor: float, implausible: bool) -> None:
    """63 bpm read at half its sample rate is 32 bpm (plausible), at a third 21 bpm: below 30, so unreadable."""
    signal, rate = records["ptbxl/3"]
    right = quality(signal, rate)["heart_rate_bpm"]
    result = quality(signal, rate * claimed_factor)
    assert result["heart_rate_bpm"] == pytest.approx(right * claimed_factor, rel=0.02)
    assert result["implausible_heart_rate"] == implausible and result["unreadable"] == implausible


def test_unannotated_test_fold_records_raise_no_alarm(ptbxl_dir: pathlib.Path) -> None:
    """PTB-XL's test fold (strat_fold 10): the gate flags only records whose noise PTB-XL's annotators noted."""
    notes = ("baseline_drift", "static_noise", "burst_noise", "electrodes_problems")
    with open(ptbxl_dir / "ptbxl_database.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["strat_fold"] == "10"]
    assert len(rows) == 54
    signals = np.stack([read_ptbxl(ptbxl_dir, int(row["ecg_id"]))[0] for row in rows])
    result = {name: value.numpy() for name, value in signal_quality(signals, 500.0).items()}
    alarmed = (result["bad_lead_count"] > 0) | result["unreadable"]
    alarms = {int(row["ecg_id"]): any(row[note].strip() for note in notes)
              for row, alarm in zip(rows, alarmed) if alarm}
    assert alarms, "the gate flagged nothing, not even the noisy records"
    assert all(alarms.values()), alarms


def test_a_batch_of_any_length_gives_each_record_its_own_result(records) -> None:
    """Traced for [None, None, 12] with stock ops only; a batch equals its records one by one (no leak between)."""
    gate = tf.function(lambda ecg: signal_quality(ecg, 500.0))
    concrete = gate.get_concrete_function(tf.TensorSpec([None, None, 12], tf.float32))
    assert not [op for op in stock_op_types(concrete) if not hasattr(tf.raw_ops, op)]
    first, second = records["ptbxl/3"][0][:4000].copy(), records["ptbxl/14"][0][:4000].copy()
    second[:, 7] = 0.0
    batch = {name: value.numpy() for name, value in concrete(tf.constant(np.stack([first, second]))).items()}
    for index, signal in enumerate((first, second)):
        alone = quality(signal, 500.0)
        for name, value in alone.items():
            np.testing.assert_allclose(batch[name][index], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert flagged({name: value[1] for name, value in batch.items()}) == {(7, "flat")}


def test_tflite_builtins_compute_the_same_flags(records, tmp_path: pathlib.Path) -> None:
    signal, rate = records["ptbxl/14"]
    faulty = signal.copy()
    faulty[:, 0] = 0.0
    for lead, fault in ((5, "powerline_noise"), (8, "clipped"), (10, "emg_noise")):
        faulty[:, lead] = inject(signal[:, lead], fault, rate)
    module = tf.Module()
    module.gate = tf.function(lambda ecg: signal_quality(ecg, rate),
                              input_signature=[tf.TensorSpec([1, *signal.shape], tf.float32, name="ecg")])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.gate})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = tf.lite.Interpreter(model_content=converter.convert()).get_signature_runner("serving_default")

    got = runner(ecg=faulty[None])
    want = {name: value.numpy() for name, value in module.gate(faulty[None]).items()}
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        # Rounding may move an R peak on a flat envelope by one 10-ms step: 1 in the ~900 between first and last.
        rtol = 2e-3 if name.endswith("heart_rate_bpm") else 1e-4
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=1e-6, err_msg=name)
    assert flagged({name: value[0] for name, value in got.items()}) == {
        (0, "flat"), (5, "powerline_noise"), (8, "clipped"), (10, "emg_noise")}

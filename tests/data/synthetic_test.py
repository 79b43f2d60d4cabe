"""The synthetic source: API contract, determinism, and ECG realism measured from the signal itself.

Each realism test measures many patients of a class with simple, standard signal processing (band-pass,
find_peaks, median beat, spatial velocity) and compares classes, so no single patient is cherry-picked.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle

import numpy as np
import pytest
from scipy import signal as sps

from ecg_tfx.core.labels import SYNTHETIC_CLASSES, SYNTHETIC_CONDITIONS
from ecg_tfx.core.records import STANDARD12, RecordError
from ecg_tfx.data.sources.synthetic import MI_TERRITORIES, SyntheticSource, draw_patient, synthesize

FS = 500.0
DURATION_S = 20.0
PATIENTS_PER_CLASS = 6
INDEPENDENT = [STANDARD12.index(lead) for lead in ("i", "ii", "v1", "v2", "v3", "v4", "v5", "v6")]
LEAD = {name: i for i, name in enumerate(STANDARD12)}


def bandpass(x: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    sos = sps.butter(2, [low_hz, high_hz], "bandpass", fs=FS, output="sos")
    return sps.sosfiltfilt(sos, x, axis=0)


def detect_r_peaks(sig: np.ndarray) -> np.ndarray:
    """Sample indices of R peaks: find_peaks on the multi-lead 5-25 Hz QRS energy, each then moved to the
    maximum of the lead with the tallest R waves (within 50 ms)."""
    energy = np.sum(bandpass(sig[:, INDEPENDENT], 5.0, 25.0) ** 2, axis=1)
    peaks, _ = sps.find_peaks(energy, height=0.2 * np.percentile(energy, 99.5), distance=int(0.25 * FS))
    clean = bandpass(sig, 0.5, 40.0)
    w = int(0.05 * FS)
    windows = [slice(max(p - w, 0), p + w + 1) for p in peaks]
    tallest = np.argmax(np.median([clean[win].max(axis=0) for win in windows], axis=0))
    return np.array([win.start + np.argmax(clean[win, tallest]) for win in windows])


@dataclasses.dataclass
class Beat:
    """The median beat of a record (0.5-30 Hz) and its fiducial points, in samples of `wave`."""

    wave: np.ndarray  # [samples, 12]
    r: int
    qrs_onset: int
    qrs_offset: int

    def level(self, start_s: float, stop_s: float, at: int) -> np.ndarray:
        return self.wave[at + int(start_s * FS) : at + int(stop_s * FS)].mean(axis=0)

    @property
    def st(self) -> np.ndarray:
        """ST level per lead: 60-80 ms after the J point, relative to the PR segment just before the QRS."""
        return self.level(0.06, 0.08, self.qrs_offset) - self.level(-0.02, -0.005, self.qrs_onset)

    @property
    def qrs_width_s(self) -> float:
        return (self.qrs_offset - self.qrs_onset) / FS


def median_beat(sig: np.ndarray, peaks: np.ndarray, before_s: float = 0.3, after_s: float = 0.5) -> Beat:
    """Median beat (0.5-30 Hz); QRS bounds where the spatial velocity exceeds 15% of its maximum around the
    R peak."""
    clean = bandpass(sig, 0.5, 30.0)
    b, a = int(before_s * FS), int(after_s * FS)
    wave = np.median(np.stack([clean[p - b : p + a] for p in peaks if b <= p <= len(sig) - a]), axis=0)
    velocity = np.linalg.norm(np.gradient(wave[:, INDEPENDENT], axis=0) * FS, axis=1)
    lo, hi = b - int(0.12 * FS), b + int(0.15 * FS)
    above = lo + np.flatnonzero(velocity[lo:hi] > 0.15 * velocity[lo:hi].max())
    return Beat(wave, b, int(above[0]), int(above[-1]))


@dataclasses.dataclass
class Measured:
    signal: np.ndarray
    truth: dict
    peaks: np.ndarray
    beat: Beat

    @property
    def rr_s(self) -> np.ndarray:
        return np.diff(self.peaks) / FS


def measure(sig: np.ndarray, truth: dict) -> Measured:
    peaks = detect_r_peaks(sig)
    return Measured(sig, truth, peaks, median_beat(sig, peaks))


def patients_with(conditions: tuple[str, ...], count: int = PATIENTS_PER_CLASS, **params) -> list[Measured]:
    """`count` patients with these conditions (and any patient parameters given), one record each, measured."""
    measured = []
    for patient in range(count):
        rng = np.random.default_rng([11, patient, 7])
        p = dataclasses.replace(draw_patient(conditions, rng), **params)
        measured.append(measure(*synthesize(conditions, DURATION_S, FS, rng, p)))
    return measured


@pytest.fixture(scope="module")
def cohort() -> dict[str, list[Measured]]:
    """PATIENTS_PER_CLASS patients per condition, one record each, measured."""
    source = SyntheticSource(
        num_patients=PATIENTS_PER_CLASS * len(SYNTHETIC_CLASSES),
        records_per_patient=1,
        duration_s=DURATION_S,
        sample_rate_hz=FS,
        seed=11,
    )
    groups: dict[str, list[Measured]] = {c: [] for c in SYNTHETIC_CLASSES}
    for patient in range(source.num_patients):
        sig, truth = source.synthesize(patient, 0)
        groups[truth["condition"]].append(measure(sig, truth))
    return groups


def test_refs_sorted_grouped_and_balanced() -> None:
    source = SyntheticSource(num_patients=15, records_per_patient=3, duration_s=5.0, sample_rate_hz=250.0)
    refs, errors = source.refs()
    assert errors == []
    assert len(refs) == 45
    assert [r.record_id for r in refs] == sorted(r.record_id for r in refs)
    assert refs[22].record_id == "p0007_r1" and refs[22].patient_id == "p0007"
    by_patient: dict[str, set[tuple[str, ...]]] = {}
    for ref in refs:
        assert ref.record_id.startswith(ref.patient_id + "_")
        assert (ref.leads, ref.sample_rate_hz, ref.duration_s, ref.path, ref.fold) == (STANDARD12, 250.0, 5.0, "", None)
        by_patient.setdefault(ref.patient_id, set()).add(ref.labels)
    assert len(by_patient) == 15 and all(len(labels) == 1 for labels in by_patient.values())
    counts = {c: sum(labels == {(c,)} for labels in by_patient.values()) for c in SYNTHETIC_CLASSES}
    assert counts == {c: 3 for c in SYNTHETIC_CLASSES}


def test_ids_sort_numerically_for_many_patients_and_records() -> None:
    many_patients = [r.record_id for r in SyntheticSource(num_patients=10_001, records_per_patient=1).refs()[0]]
    assert many_patients[0] == "p00000_r0" and many_patients[-1] == "p10000_r0"
    assert many_patients == sorted(many_patients, key=lambda i: int(i[1:6]))
    many_records = [r.record_id for r in SyntheticSource(num_patients=2, records_per_patient=12).refs()[0]]
    assert many_records[:3] == ["p0000_r00", "p0000_r01", "p0000_r02"] and many_records[-1] == "p0001_r11"
    assert many_records == sorted(many_records, key=lambda i: (int(i[1:5]), int(i[7:])))


def test_load_gives_record_in_millivolts() -> None:
    source = SyntheticSource(num_patients=5, records_per_patient=1, duration_s=DURATION_S)
    for ref in source.refs()[0]:
        record = source.load(ref)
        assert record.ref == ref and record.leads == STANDARD12 and record.sample_rate_hz == FS
        assert record.signal.dtype == np.float32 and record.signal.shape == (int(DURATION_S * FS), 12)
        assert np.all(np.isfinite(record.signal))
        span = np.ptp(record.signal, axis=0)
        assert 0.3 < span.max() < 8.0, f"{ref.record_id}: implausible amplitude {span.max():.2f} mV"


def _load_bytes(args: tuple[SyntheticSource, str]) -> bytes:
    source, record_id = args
    ref = next(r for r in source.refs()[0] if r.record_id == record_id)
    return source.load(ref).signal.tobytes()


def test_deterministic_in_any_order_and_process() -> None:
    source = SyntheticSource(num_patients=4, records_per_patient=2, duration_s=4.0, seed=3)
    refs = source.refs()[0]
    forward = {r.record_id: source.load(r).signal.tobytes() for r in refs}
    backward = {r.record_id: source.load(r).signal.tobytes() for r in reversed(refs)}
    assert forward == backward
    assert len(set(forward.values())) == len(refs)  # every record differs
    clone = pickle.loads(pickle.dumps(source))
    assert clone.load(refs[5]).signal.tobytes() == forward[refs[5].record_id]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_load_bytes, [(source, refs[3].record_id)]) == [forward[refs[3].record_id]]
    other_seed = SyntheticSource(num_patients=4, records_per_patient=2, duration_s=4.0, seed=4)
    assert other_seed.load(refs[3]).signal.tobytes() != forward[refs[3].record_id]


def test_records_of_one_patient_share_traits_but_vary() -> None:
    source = SyntheticSource(num_patients=10, records_per_patient=3, duration_s=DURATION_S)
    for patient in (1, 2, 6, 7):  # MI and bundle branch block patients
        truths = [source.synthesize(patient, r)[1] for r in range(3)]
        assert len({(t["mi_territory"], t["bbb_type"]) for t in truths}) == 1
        rates = [t["heart_rate_bpm"] for t in truths]
        assert len(set(rates)) == 3 and max(rates) / min(rates) < 1.2
        assert np.ptp([t["axis_deg"] for t in truths]) < 20.0


def test_load_rejects_foreign_and_out_of_range_ids() -> None:
    source = SyntheticSource(num_patients=3, records_per_patient=2)
    ref = source.refs()[0][0]
    for record_id in ("p0003_r0", "p0000_r2", "p2_r0", "ptb/s0010_re"):
        with pytest.raises(RecordError):
            source.load(dataclasses.replace(ref, record_id=record_id))


def test_rejects_unknown_condition_and_bad_sizes() -> None:
    for conditions in ("flutter", ("normal", "flutter"), ()):
        with pytest.raises(ValueError, match="unknown conditions"):
            synthesize(conditions, 5.0, FS, np.random.default_rng(0))
    with pytest.raises(ValueError, match="cohort"):
        SyntheticSource(cohort="superdiagnostic_single")
    with pytest.raises(ValueError):
        SyntheticSource(num_patients=0)
    with pytest.raises(ValueError):
        SyntheticSource(sample_rate_hz=50.0)


def test_einthoven_and_goldberger_relations_hold() -> None:
    for condition in (*SYNTHETIC_CONDITIONS, ("myocardial_infarction", "bundle_branch_block", "atrial_fibrillation")):
        rng = np.random.default_rng(5)
        s, _ = synthesize(condition, 5.0, FS, rng, draw_patient(condition, rng))
        i, ii, iii, avr, avl, avf = (s[:, LEAD[n]].astype(np.float64) for n in ("i", "ii", "iii", "avr", "avl", "avf"))
        np.testing.assert_allclose(iii, ii - i, atol=1e-5)
        np.testing.assert_allclose(avr, -(i + ii) / 2, atol=1e-5)
        np.testing.assert_allclose(avl, i - ii / 2, atol=1e-5)
        np.testing.assert_allclose(avf, ii - i / 2, atol=1e-5)


def test_detected_r_peaks_match_truth_for_normal_records(cohort: dict[str, list[Measured]]) -> None:
    for m in cohort["normal"]:
        detected = m.peaks / FS
        detected = detected[(detected > 0.1) & (detected < DURATION_S - 0.1)]
        truth = m.truth["r_peak_times_s"]
        truth = truth[(truth > 0.1) & (truth < DURATION_S - 0.1)]
        assert len(detected) == len(truth)
        assert np.max(np.abs(detected - truth)) < 0.015
        assert 60.0 / m.rr_s.mean() == pytest.approx(m.truth["heart_rate_bpm"], rel=0.03)
        assert 45.0 < m.truth["heart_rate_bpm"] < 110.0


def p_wave_consistency(m: Measured) -> float:
    """Share of lead II power before the QRS that repeats in every beat (a P wave does; f-waves do not).

    Uses the 140-20 ms before QRS onset of beats after an RR >= 0.5 s (so the previous T wave has ended),
    0.5-15 Hz, each segment detrended by its chord. The locked power is estimated without the 1/N bias of
    averaging N segments of noise.
    """
    x = bandpass(m.signal[:, LEAD["ii"]], 0.5, 15.0)
    onsets = m.peaks[1:][m.rr_s >= 0.5] + (m.beat.qrs_onset - m.beat.r)
    lo, hi = int(0.14 * FS), int(0.02 * FS)
    segs = np.stack([x[i - lo : i - hi] for i in onsets if i >= lo])
    n = len(segs)
    assert n >= 3
    segs = segs - (segs[:, :1] + (segs[:, -1:] - segs[:, :1]) * np.linspace(0.0, 1.0, segs.shape[1]))
    total = np.mean(np.sum(segs**2, axis=1))
    locked = (n * np.sum(segs.mean(axis=0) ** 2) - total) / (n - 1)
    return float(locked / total)


def test_atrial_fibrillation_has_irregular_rr_and_no_p_waves(cohort: dict[str, list[Measured]]) -> None:
    def rr_cv(m: Measured) -> float:
        return float(m.rr_s.std() / m.rr_s.mean())

    af, normal = cohort["atrial_fibrillation"], cohort["normal"]
    assert min(map(rr_cv, af)) > 0.12 > 0.07 > max(map(rr_cv, normal))
    assert max(map(p_wave_consistency, af)) < 0.7 and min(map(p_wave_consistency, normal)) > 0.75
    assert (
        np.median([p_wave_consistency(m) for m in af]) < 0.3 < 0.9 < np.median([p_wave_consistency(m) for m in normal])
    )


def test_atrial_fibrillation_shows_f_waves_after_qrst_cancellation(cohort: dict[str, list[Measured]]) -> None:
    """Subtracting the median beat leaves the atrial activity; in AF it has a 4-9 Hz dominant frequency."""

    def residual_band_power(m: Measured) -> tuple[float, float]:
        clean = bandpass(m.signal[:, LEAD["v1"]], 0.5, 40.0)
        b = m.beat.r
        for p in m.peaks:
            lo, hi = max(p - b, 0), min(p - b + len(m.beat.wave), len(clean))
            clean[lo:hi] -= m.beat.wave[lo - (p - b) : hi - (p - b), LEAD["v1"]]
        freqs, psd = sps.welch(clean, fs=FS, nperseg=1024)
        band = (freqs >= 3.0) & (freqs <= 12.0)
        return float(freqs[band][np.argmax(psd[band])]), float(psd[(freqs >= 4) & (freqs <= 9)].mean())

    af = [residual_band_power(m) for m in cohort["atrial_fibrillation"]]
    normal = [residual_band_power(m) for m in cohort["normal"]]
    assert all(4.0 <= dominant <= 9.5 for dominant, _ in af)
    assert min(power for _, power in af) > 5 * max(power for _, power in normal)


def test_bundle_branch_block_widens_qrs(cohort: dict[str, list[Measured]]) -> None:
    bbb = [m.beat.qrs_width_s for m in cohort["bundle_branch_block"]]
    normal = [m.beat.qrs_width_s for m in cohort["normal"]]
    assert min(bbb) >= 0.12 and max(normal) < 0.11
    assert {m.truth["bbb_type"] for m in cohort["bundle_branch_block"]} == {"left", "right"}
    for m in cohort["bundle_branch_block"] + cohort["normal"]:
        assert m.beat.qrs_width_s == pytest.approx(m.truth["qrs_width_s"], abs=0.03)


def test_bundle_branch_block_morphology(cohort: dict[str, list[Measured]]) -> None:
    """RBBB: terminal positive R' in V1. LBBB: V1 mostly negative (QS/rS), V6 positive and broad."""
    for m in cohort["bundle_branch_block"]:
        qrs = m.beat.wave[m.beat.qrs_onset : m.beat.qrs_offset + 1]
        v1, v6 = qrs[:, LEAD["v1"]], qrs[:, LEAD["v6"]]
        if m.truth["bbb_type"] == "right":
            r_prime = len(v1) // 2 + np.argmax(v1[len(v1) // 2 :])
            assert v1[r_prime] > 0.3, "no R' in V1"
            assert v1[:r_prime].min() < v1[r_prime] - 0.3, "no S before the R'"
        else:
            assert -v1.min() > 2 * max(v1.max(), 0.05)
            assert np.sum(v6 > 0.5 * v6.max()) / FS > 0.04, "V6 R is not broad"


def test_myocardial_infarction_elevates_st_in_its_territory(cohort: dict[str, list[Measured]]) -> None:
    """STEMI-like: >= 0.1 mV in two or more leads of the territory, above the rest of the ECG and above the
    (physiologically small) ST elevation that normal records show anywhere."""
    normal_max = max(m.beat.st.max() for m in cohort["normal"])
    assert normal_max < 0.15
    territories = set()
    for m in cohort["myocardial_infarction"]:
        territories.add(m.truth["mi_territory"])
        leads = [LEAD[lead] for lead in m.truth["mi_leads"]]
        others = [i for i in range(12) if i not in leads]
        st = m.beat.st
        assert np.sum(st[leads] >= 0.1) >= 2, f"{m.truth['mi_territory']}: ST {np.round(st[leads], 2)}"
        assert st[leads].mean() > max(normal_max, st[others].mean() + 0.1)
    assert len(territories) >= 2


def q_depth(m: Measured, leads: tuple[str, ...]) -> float:
    """Mean over `leads` of the deepest point in the QRS's first 40 ms below the PR segment, mV (> 0: a Q wave)."""
    start = m.beat.qrs_onset
    baseline = m.beat.level(-0.02, -0.005, start)
    return float(-(m.beat.wave[start : start + int(0.04 * FS)] - baseline).min(axis=0)[[LEAD[x] for x in leads]].mean())


def r_height(m: Measured, leads: tuple[str, ...]) -> float:
    """Mean over `leads` of the QRS maximum above the PR segment, mV."""
    baseline = m.beat.level(-0.02, -0.005, m.beat.qrs_onset)
    qrs = m.beat.wave[m.beat.qrs_onset : m.beat.qrs_offset + 1] - baseline
    return float(qrs.max(axis=0)[[LEAD[x] for x in leads]].mean())


def test_old_myocardial_infarction_leaves_q_waves_lost_r_and_lower_t_without_st_elevation() -> None:
    """PTB-XL's MI records are established infarcts: against NORM, deep Q and small R in the territory's leads,
    T lower there, ST as in normal records. Each old infarct is compared with its patient's own beat without it
    (the same parameters, rhythm and noise)."""
    for territory in ("inferior", "anterior"):
        leads = MI_TERRITORIES[territory][1]
        for patient in range(4):
            p = draw_patient("myocardial_infarction", np.random.default_rng([11, patient, 8]), "old")
            p = dataclasses.replace(p, mi_territory=territory)
            mi, twin = (measure(*synthesize(c, DURATION_S, FS, np.random.default_rng([12, patient]), p))
                        for c in ("myocardial_infarction", "normal"))
            assert mi.truth["mi_phase"] == "old"
            assert q_depth(mi, leads) > q_depth(twin, leads) + 0.1, territory
            assert r_height(mi, leads) < 0.75 * r_height(twin, leads), territory
            assert t_level(mi, leads) < t_level(twin, leads) - 0.02, territory
            assert st_elevated_leads(mi, leads) < 2, territory


def test_hypertrophy_has_high_voltage_and_strain(cohort: dict[str, list[Measured]]) -> None:
    def qrs(m: Measured) -> np.ndarray:
        return m.beat.wave[m.beat.qrs_onset : m.beat.qrs_offset + 1]

    def total_voltage(m: Measured) -> float:  # sum of the 12 leads' QRS peak-to-peak amplitudes
        return float(np.ptp(qrs(m), axis=0).sum())

    def sokolow_lyon(m: Measured) -> float:  # S in V1 + R in V5 or V6
        return float(-qrs(m)[:, LEAD["v1"]].min() + qrs(m)[:, [LEAD["v5"], LEAD["v6"]]].max())

    def lateral_t(m: Measured) -> float:
        return float(m.beat.level(0.1, 0.25, m.beat.qrs_offset)[[LEAD["v5"], LEAD["v6"]]].mean())

    lvh, normal = cohort["hypertrophy"], cohort["normal"]
    assert min(map(total_voltage, lvh)) > max(map(total_voltage, normal))
    assert np.median([total_voltage(m) for m in lvh]) > 1.5 * np.median([total_voltage(m) for m in normal])
    assert np.median([sokolow_lyon(m) for m in lvh]) > 3.5 > max(map(sokolow_lyon, normal))
    assert max(map(lateral_t, lvh)) < 0.0 < min(map(lateral_t, normal))


def st_elevated_leads(m: Measured, leads: tuple[str, ...], mv: float = 0.1) -> int:
    return int(np.sum(m.beat.st[[LEAD[lead] for lead in leads]] >= mv))


def st_depressed_leads(m: Measured, leads: tuple[str, ...], mv: float = 0.05) -> int:
    return int(np.sum(m.beat.st[[LEAD[lead] for lead in leads]] <= -mv))


def t_level(m: Measured, leads: tuple[str, ...]) -> float:
    """Mean level 100-250 ms after the QRS (the T wave's first part) over `leads`, mV."""
    return float(m.beat.level(0.1, 0.25, m.beat.qrs_offset)[[LEAD[lead] for lead in leads]].mean())


def test_st_t_change_depresses_st_and_flattens_or_inverts_t_in_its_region(cohort: dict[str, list[Measured]]) -> None:
    """PTB-XL's STTC without infarction: ST depression >= 0.05 mV in two or more leads of the region, the T wave
    there flat or inverted and lower than in any normal record, a normal QRS, and no ST elevation but the
    reciprocal one in aVR and V1."""
    sttc, normal = patients_with(("st_t_change",)), cohort["normal"]
    assert len({m.truth["sttc_region"] for m in sttc}) >= 2
    not_reciprocal = tuple(lead for lead in STANDARD12 if lead not in ("avr", "v1"))
    for m in sttc:
        leads = m.truth["sttc_leads"]
        assert st_depressed_leads(m, leads) >= 2, f"{m.truth['sttc_region']}: ST {np.round(m.beat.st, 2)}"
        assert t_level(m, leads) < min(0.05, min(t_level(n, leads) for n in normal) - 0.05)
        assert m.beat.qrs_width_s < 0.11 and st_elevated_leads(m, not_reciprocal) == 0
    assert max(st_depressed_leads(n, not_reciprocal) for n in normal) == 0


def test_conditions_combine_on_one_beat(cohort: dict[str, list[Measured]]) -> None:
    """PTB-XL's commonest pairs: MI with right bundle branch block keeps the R' and broad QRS and the territory's
    ST elevation; hypertrophy with ST/T change keeps the high voltage and adds the region's ST depression."""
    for m in patients_with(("myocardial_infarction", "bundle_branch_block"), 4, bbb_type="right"):
        assert m.beat.qrs_width_s >= 0.12 and st_elevated_leads(m, m.truth["mi_leads"]) >= 2
    normal_voltage = max(np.ptp(n.beat.wave[n.beat.qrs_onset : n.beat.qrs_offset + 1], axis=0).sum()
                         for n in cohort["normal"])
    for m in patients_with(("hypertrophy", "st_t_change"), 4):
        assert np.ptp(m.beat.wave[m.beat.qrs_onset : m.beat.qrs_offset + 1], axis=0).sum() > normal_voltage
        assert st_depressed_leads(m, m.truth["sttc_leads"]) >= 2
        assert m.truth["condition"] == "hypertrophy+st_t_change"


def test_powerline_noise_at_the_patients_mains_frequency() -> None:
    source = SyntheticSource(num_patients=10, records_per_patient=1, duration_s=DURATION_S, seed=2)
    seen = set()
    for patient in range(10):
        sig, truth = source.synthesize(patient, 0)
        freqs, psd = sps.welch(sig[:, LEAD["v2"]], fs=FS, nperseg=int(FS))
        mains, other = truth["powerline_hz"], 110.0 - truth["powerline_hz"]
        assert psd[freqs == mains][0] > 10 * psd[freqs == other][0]
        seen.add(mains)
    assert seen == {50.0, 60.0}

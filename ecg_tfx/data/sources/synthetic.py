"""Seeded synthetic 12-lead ECGs: the default source, so everything runs without a download.

The beat model follows ECGSYN's idea (each wave a Gaussian) but in three dimensions: every wave is a
Gaussian pulse of a heart dipole (Frank X left, Y feet, Z back, in mV). The dipole is projected onto nine
electrodes with the Dower lead vectors, noise is added per electrode, and the 12 leads are formed from the
electrodes exactly as an electrocardiograph does. Einthoven's and Goldberger's relations therefore hold
by construction, also for the noise.

Conditions change the beat: myocardial infarction in one territory (acute: pathological Q waves and ST
elevation; old: Q waves, lost R and flat or inverted T waves without ST elevation, as PTB-XL's MI records),
bundle branch block (right: late R' wave; left: broad notched R), hypertrophy (high QRS voltage with strain),
ST/T change (ST depression and flat or inverted T waves in one region, without infarction) and atrial
fibrillation (irregular RR, no P waves, fibrillatory waves). A patient may have several conditions
(`synthetic_cohort`); their changes apply in that order on one beat.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence

import numpy as np
from scipy import signal as sps

from ecg_tfx.core.labels import SYNTHETIC_CONDITIONS
from ecg_tfx.core.records import STANDARD12, Record, RecordError, RecordRef
from ecg_tfx.data.sources.synthetic_cohort import COHORTS, MI_DRAW, patient_conditions

# Dower (1980) lead vectors: the voltage of leads I, II, V1..V6 for a unit dipole along Frank X, Y, Z.
_DOWER = np.array(
    [
        [0.632, -0.235, 0.059],  # I
        [0.235, 1.066, -0.132],  # II
        [-0.515, 0.157, -0.917],  # V1
        [0.044, 0.164, -1.387],  # V2
        [0.882, 0.098, -1.277],  # V3
        [1.213, 0.127, -0.601],  # V4
        [1.125, 0.127, -0.086],  # V5
        [0.831, 0.076, 0.230],  # V6
    ]
)

ELECTRODES = ("ra", "la", "ll", "v1", "v2", "v3", "v4", "v5", "v6")


def _electrode_vectors() -> np.ndarray:
    """[3, 9]: each electrode's potential per unit dipole, taking RA + LA + LL = 0 (the Wilson terminal)."""
    lead_i, lead_ii, chest = _DOWER[0], _DOWER[1], _DOWER[2:]
    ra = -(lead_i + lead_ii) / 3.0
    return np.column_stack([ra, ra + lead_i, ra + lead_ii, *chest])


def _leads_from_electrodes() -> np.ndarray:
    """[9, 12]: how an electrocardiograph forms the STANDARD12 leads from the electrode potentials."""
    m = np.zeros((len(ELECTRODES), len(STANDARD12)))
    ra, la, ll = 0, 1, 2
    limb = {
        "i": {la: 1.0, ra: -1.0},
        "ii": {ll: 1.0, ra: -1.0},
        "iii": {ll: 1.0, la: -1.0},
        "avr": {ra: 1.0, la: -0.5, ll: -0.5},
        "avl": {la: 1.0, ra: -0.5, ll: -0.5},
        "avf": {ll: 1.0, ra: -0.5, la: -0.5},
    }
    for lead, weights in limb.items():
        for electrode, w in weights.items():
            m[electrode, STANDARD12.index(lead)] = w
    for k in range(6):  # chest leads against Wilson's central terminal
        col = STANDARD12.index(f"v{k + 1}")
        m[3 + k, col] = 1.0
        m[[ra, la, ll], col] = -1.0 / 3.0
    return m


ELECTRODE_VECTORS = _electrode_vectors()
ELECTRODES_TO_LEADS = _leads_from_electrodes()
LEAD_VECTORS = ELECTRODE_VECTORS @ ELECTRODES_TO_LEADS  # [3, 12]: dipole -> 12 leads

# Anatomical direction of each infarct territory (the injury current points towards it) and its leads.
MI_TERRITORIES = {
    "inferior": ((0.0, 1.0, 0.1), ("ii", "iii", "avf")),
    "anterior": ((0.6, 0.0, -1.0), ("v1", "v2", "v3", "v4")),
    "lateral": ((1.0, -0.35, 0.5), ("i", "avl", "v5", "v6")),
}
MI_PHASES = ("acute", "old")
# How far an old infarct turns the T wave away from its territory (`_turn_t_away`, plus up to 0.6 with severity):
# chosen so the median T and ST of the lead groups match those of PTB-XL records 1-400 (IMI: T in II and aVF about
# half of NORM's; ASMI: T in V2-V3 two thirds of NORM's); lateral (5 records there) in between.
_OLD_MI_T_TURN = {"inferior": 0.8, "anterior": 0.4, "lateral": 0.6}
BBB_TYPES = ("right", "left")
# ST/T change without infarction: the direction the ST segment is depressed away from, and the leads that show
# it (PTB-XL's ischaemic STTC statements are mostly lateral, inferolateral and anterolateral; aVR, and V1 for
# lateral changes, show the reciprocal ST elevation, as in subendocardial ischaemia and strain).
STTC_REGIONS = {
    "lateral": ((1.0, 0.1, 0.0), ("i", "avl", "v5", "v6")),
    "inferolateral": ((0.75, 0.65, 0.1), ("ii", "iii", "avf", "v5", "v6")),
    "anterolateral": ((0.85, 0.35, -0.55), ("i", "ii", "v3", "v4", "v5", "v6")),
}

Conditions = tuple[str, ...]


def as_conditions(condition: str | Sequence[str]) -> Conditions:
    """One condition or several, checked and in SYNTHETIC_CONDITIONS order."""
    wanted = {condition} if isinstance(condition, str) else set(condition)
    unknown = sorted(wanted - set(SYNTHETIC_CONDITIONS))
    if unknown or not wanted:
        raise ValueError(f"unknown conditions {unknown or condition!r}; expected some of {SYNTHETIC_CONDITIONS}")
    return tuple(c for c in SYNTHETIC_CONDITIONS if c in wanted)


@dataclasses.dataclass(frozen=True)
class PatientParams:
    """What makes one synthetic patient: drawn once from the patient seed, jittered per record."""

    heart_rate_bpm: float
    axis_deg: float  # frontal-plane direction of the main QRS vector (0 = lead I, 90 = aVF)
    horizontal_rotation_deg: float  # rotation of the heart about the body's long axis
    amplitude_scale: float  # body habitus: scales every cardiac voltage
    pr_interval_s: float
    qt_scale: float  # individual QT relative to the template's (QTc spread)
    severity: float  # 0..1, how pronounced the condition's changes are
    noise_level: float  # scales baseline wander, powerline and EMG noise
    powerline_hz: float  # 50 or 60
    resp_rate_hz: float  # drives respiratory sinus arrhythmia, QRS amplitude modulation, baseline wander
    mi_territory: str | None = None
    mi_phase: str = "acute"  # or "old": an established infarct (MI_PHASES)
    bbb_type: str | None = None
    sttc_region: str | None = None


def draw_patient(
    condition: str | Sequence[str],
    rng: np.random.Generator,
    mi_phase: str = "acute",
    mi_territory_weights: dict[str, float] | None = None,
) -> PatientParams:
    """Draws one patient's parameters for a condition or several; an infarct is in `mi_phase`, in a territory
    drawn with `mi_territory_weights` (default: each equally likely)."""
    if mi_phase not in MI_PHASES:
        raise ValueError(f"mi_phase must be one of {MI_PHASES}, not {mi_phase!r}")
    conditions = as_conditions(condition)
    rate_range = (80.0, 125.0) if "atrial_fibrillation" in conditions else (
        (55.0, 90.0) if "hypertrophy" in conditions else (55.0, 95.0))
    return PatientParams(
        heart_rate_bpm=float(rng.uniform(*rate_range)),
        axis_deg=float(np.clip(rng.normal(45.0, 18.0), -10.0, 90.0)),
        horizontal_rotation_deg=float(rng.uniform(-12.0, 12.0)),
        amplitude_scale=float(rng.uniform(0.85, 1.15)),
        pr_interval_s=float(rng.uniform(0.13, 0.19)),
        qt_scale=float(rng.uniform(0.94, 1.06)),
        severity=float(rng.uniform(0.0, 1.0)),
        noise_level=float(rng.uniform(0.5, 1.5)),
        powerline_hz=float(rng.choice([50.0, 60.0])),
        resp_rate_hz=float(rng.uniform(0.18, 0.33)),
        mi_territory=_territory(rng, mi_territory_weights) if "myocardial_infarction" in conditions else None,
        mi_phase=mi_phase,
        bbb_type=str(rng.choice(BBB_TYPES)) if "bundle_branch_block" in conditions else None,
        sttc_region=str(rng.choice(list(STTC_REGIONS))) if "st_t_change" in conditions else None,
    )


def _territory(rng: np.random.Generator, weights: dict[str, float] | None) -> str:
    if weights is None:
        return str(rng.choice(list(MI_TERRITORIES)))
    names = list(MI_TERRITORIES)
    p = np.array([weights.get(name, 0.0) for name in names])
    return str(rng.choice(names, p=p / p.sum()))


def vary(params: PatientParams, rng: np.random.Generator) -> PatientParams:
    """One record's small departures from the patient's usual state (rate, axis, amplitude, noise)."""
    return dataclasses.replace(
        params,
        heart_rate_bpm=params.heart_rate_bpm * float(rng.uniform(0.94, 1.06)),
        axis_deg=params.axis_deg + float(rng.normal(0.0, 3.0)),
        amplitude_scale=params.amplitude_scale * float(rng.uniform(0.96, 1.04)),
        severity=float(np.clip(params.severity + rng.normal(0.0, 0.05), 0.0, 1.0)),
        noise_level=params.noise_level * float(rng.uniform(0.8, 1.25)),
        resp_rate_hz=params.resp_rate_hz * float(rng.uniform(0.9, 1.1)),
    )


@dataclasses.dataclass(frozen=True)
class _Wave:
    """One Gaussian pulse of the heart dipole, timed relative to the beat's R wave."""

    offset_s: float
    sigma_s: float
    vector: tuple[float, float, float]  # peak dipole in mV (Frank X, Y, Z)
    repolarization: bool = False  # adapts to the RR interval like the QT interval

    def scaled(self, factor: float) -> _Wave:
        return dataclasses.replace(self, vector=tuple(factor * v for v in self.vector))

    def plus(self, vector: np.ndarray) -> _Wave:
        return dataclasses.replace(self, vector=tuple(float(v) for v in np.add(self.vector, vector)))


_QRS_WAVES = ("q", "r", "r2", "s", "r_prime")


def _normal_beat(pr_interval_s: float) -> dict[str, _Wave]:
    """The healthy template: biphasic P (right then left atrium), septal q, R, S, ST, asymmetric T."""
    return {
        "p_right": _Wave(-(pr_interval_s + 0.01), 0.018, (0.02, 0.08, -0.05)),
        "p_left": _Wave(-(pr_interval_s - 0.02), 0.018, (0.06, 0.05, 0.04)),
        "q": _Wave(-0.024, 0.008, (-0.12, 0.02, -0.18)),
        "r": _Wave(0.0, 0.011, (1.1, 0.8, 0.35)),
        "s": _Wave(0.024, 0.010, (-0.2, -0.2, 0.65)),
        "st": _Wave(0.13, 0.065, (0.0, 0.0, 0.0), True),
        "t_early": _Wave(0.22, 0.06, (0.12, 0.10, -0.08), True),
        "t_late": _Wave(0.28, 0.04, (0.18, 0.14, -0.12), True),
    }


def _unit(vector: tuple[float, float, float]) -> np.ndarray:
    return np.array(vector) / np.linalg.norm(vector)


def _turn_t_away(waves: dict[str, _Wave], u: np.ndarray, turn: float) -> None:
    """Removes `turn` times the T wave's component towards unit vector `u` (1: flat there, 2: mirrored)."""
    for name in ("t_early", "t_late"):
        waves[name] = waves[name].plus(-turn * max(float(np.array(waves[name].vector) @ u), 0.0) * u)


def _beat_waves(conditions: Conditions, p: PatientParams) -> dict[str, _Wave]:
    """The template altered by the conditions (in this order), before the patient's rotation and amplitude scale."""
    waves = _normal_beat(p.pr_interval_s)
    k = 0.75 + 0.5 * p.severity  # 0.75 .. 1.25
    if "hypertrophy" in conditions:
        # High leftward-posterior QRS voltage, slightly longer activation, strain, left atrial enlargement.
        r = (1.0 + 0.3 * p.severity) * np.array((2.3, 0.8, 1.0))
        strain = -r / np.linalg.norm(r)  # repolarization turned away from the thick left ventricle
        waves["r"] = _Wave(0.0, 0.0125, tuple(r))
        waves["s"] = _Wave(0.026, 0.0115, tuple(k * np.array((-0.2, -0.2, 1.1))))
        waves["st"] = waves["st"].plus(0.1 * k * strain)
        waves["t_early"] = _Wave(0.22, 0.06, tuple(0.1 * k * strain), True)
        waves["t_late"] = _Wave(0.28, 0.045, tuple(0.25 * k * strain), True)
        waves["p_left"] = waves["p_left"].scaled(1.8)
    if "bundle_branch_block" in conditions and p.bbb_type == "right":
        r_prime = np.array((-0.45, -0.05, -0.75)) * k  # late, slow right-ventricular activation
        waves["r_prime"] = _Wave(0.07, 0.02, tuple(r_prime))
        waves["s"] = dataclasses.replace(waves["s"], sigma_s=0.014)
        waves["t_late"] = waves["t_late"].plus(-0.25 * r_prime)  # secondary T change, discordant to R'
    elif "bundle_branch_block" in conditions:
        # Left: no septal q; slow left-ventricular activation as a broad, notched R; discordant ST-T.
        main = np.array((0.9, 0.3, 0.75))
        away = -main / np.linalg.norm(main)
        waves["q"] = waves["q"].scaled(0.0)
        waves["s"] = waves["s"].scaled(0.0)
        waves["r"] = _Wave(-0.012, 0.018, tuple(k * main))
        waves["r2"] = _Wave(0.046, 0.02, tuple(k * np.array((0.85, 0.15, 0.95))))
        waves["st"] = waves["st"].plus(0.12 * k * away)
        waves["t_early"] = _Wave(0.22, 0.06, tuple(0.1 * k * away), True)
        waves["t_late"] = _Wave(0.29, 0.06, tuple(0.25 * k * away), True)
    if "myocardial_infarction" in conditions and p.mi_phase == "acute":
        u = _unit(MI_TERRITORIES[p.mi_territory][0])
        r = np.array(waves["r"].vector)
        loss = 0.35 + 0.35 * p.severity  # loss of R towards the dead muscle
        waves["r"] = waves["r"].plus(-loss * max(float(r @ u), 0.0) * u)
        waves["q"] = _Wave(-0.022, 0.013, tuple(-0.4 * k * u))  # pathological Q: >= 40 ms, away from the scar
        waves["st"] = waves["st"].plus(0.35 * k * u)  # injury current: ST elevation
        waves["t_late"] = waves["t_late"].plus(0.12 * k * u)  # hyperacute T
    elif "myocardial_infarction" in conditions:
        # An established infarct (PTB-XL's MI records against NORM: deep Q and lost R in the territory, its T
        # wave flattened, ST as in normal records): most of the R towards the scar gone, a wide Q away from it.
        u = _unit(MI_TERRITORIES[p.mi_territory][0])
        r = np.array(waves["r"].vector)
        waves["r"] = waves["r"].plus(-(0.6 + 0.3 * p.severity) * max(float(r @ u), 0.0) * u)
        waves["q"] = _Wave(-0.02, 0.010, tuple(-0.45 * k * u))
        waves["st"] = waves["st"].plus(0.03 * k * u)  # at most a small residual elevation
        _turn_t_away(waves, u, _OLD_MI_T_TURN[p.mi_territory] + 0.6 * p.severity)
    if "st_t_change" in conditions:
        # Ischaemia or strain without infarction: ST depressed by 0.1-0.2 mV towards the region, and the T
        # wave's component towards it flattened (factor 1.4: about flat) or inverted (2.5: clearly negative).
        u = _unit(STTC_REGIONS[p.sttc_region][0])
        waves["st"] = waves["st"].plus(-(0.1 + 0.1 * p.severity) * u)
        _turn_t_away(waves, u, 1.4 + 1.1 * p.severity)
    if "atrial_fibrillation" in conditions:
        del waves["p_right"], waves["p_left"]
    return waves


def _rotation(p: PatientParams, template_r: np.ndarray, frontal_share: float) -> np.ndarray:
    """Turns the template heart about the body's long axis, and in the frontal plane by `frontal_share` of
    the turn that gives the template's R vector the patient's axis (atria and repolarization follow the
    QRS axis only partly, as P and T axes vary less than the QRS axis)."""
    a = frontal_share * (np.deg2rad(p.axis_deg) - np.arctan2(template_r[1], template_r[0]))
    frontal = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    h = np.deg2rad(p.horizontal_rotation_deg)
    horizontal = np.array([[np.cos(h), 0.0, np.sin(h)], [0.0, 1.0, 0.0], [-np.sin(h), 0.0, np.cos(h)]])
    return horizontal @ frontal


def _place(waves: dict[str, _Wave], p: PatientParams) -> dict[str, _Wave]:
    """The template's waves turned and scaled into the patient's body."""
    template_r = np.array(_normal_beat(p.pr_interval_s)["r"].vector)
    turns = {share: p.amplitude_scale * _rotation(p, template_r, share) for share in (0.0, 0.5, 1.0)}
    placed = {}
    for name, w in waves.items():
        share = 0.0 if name.startswith("p_") else 0.5 if w.repolarization else 1.0
        placed[name] = dataclasses.replace(w, vector=tuple(turns[share] @ w.vector))
    return placed


def _beat_times(
    conditions: Conditions, p: PatientParams, duration_s: float, resp_phase: float, rng: np.random.Generator
) -> np.ndarray:
    """R-wave times (s) from before the record starts to 1 s after it ends: sinus rhythm modulated by Mayer
    waves (~0.1 Hz) and respiratory sinus arrhythmia, or the irregular ventricular response of AF."""
    mean_rr = 60.0 / p.heart_rate_bpm
    start = -0.4 - rng.uniform(0.0, mean_rr)
    if "atrial_fibrillation" in conditions:
        n = int(np.ceil((duration_s - start + 1.0) / 0.3)) + 1  # enough even if every RR is the 0.3 s minimum
        times = start + np.concatenate([[0.0], np.cumsum(np.maximum(mean_rr * rng.lognormal(-0.025, 0.22, n), 0.3))])
        return times[: np.searchsorted(times, duration_s + 1.0) + 1]
    phase_mayer = rng.uniform(0.0, 2 * np.pi)
    mayer_hz = rng.uniform(0.08, 0.12)
    depth_mayer, depth_resp = rng.uniform(0.015, 0.035), rng.uniform(0.015, 0.04)
    times = [start]
    while times[-1] < duration_s + 1.0:
        t = times[-1]
        modulation = depth_mayer * np.sin(2 * np.pi * mayer_hz * t + phase_mayer) + depth_resp * np.sin(
            2 * np.pi * p.resp_rate_hz * t + resp_phase
        )
        times.append(t + mean_rr * (1.0 + modulation + 0.006 * rng.standard_normal()))
    return np.array(times)


def _render(
    waves: dict[str, _Wave], r_times: np.ndarray, beat_gain: np.ndarray, p: PatientParams, n: int, fs: float
) -> np.ndarray:
    """Sums every wave of every beat into the dipole [n, 3], each Gaussian only within +-4 sigma."""
    prev_rr = np.diff(r_times, prepend=2 * r_times[0] - r_times[1])  # the RR before each beat
    qt_factor = p.qt_scale * np.cbrt(prev_rr)  # Fridericia: repolarization lengthens with the preceding RR
    names = list(waves)
    pulses = np.zeros((len(names), n))
    for i, name in enumerate(names):
        w = waves[name]
        scale = qt_factor if w.repolarization else np.ones_like(r_times)
        centres, sigmas = r_times + w.offset_s * scale, w.sigma_s * scale
        half = int(np.ceil(4.0 * sigmas.max() * fs))
        idx = np.rint(centres * fs).astype(int)[:, None] + np.arange(-half, half + 1)
        g = beat_gain[:, None] * np.exp(-0.5 * ((idx / fs - centres[:, None]) / sigmas[:, None]) ** 2)
        inside = (idx >= 0) & (idx < n)
        pulses[i] = np.bincount(idx[inside], weights=g[inside], minlength=n)
    return pulses.T @ np.array([waves[name].vector for name in names])


def _fibrillatory_dipole(t: np.ndarray, fs: float, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Atrial f-waves: 4-9 Hz oscillation with wandering frequency and amplitude, mostly seen in V1."""
    f0 = rng.uniform(5.0, 8.0)
    wobble = rng.uniform(0.0, 2 * np.pi, 3)
    freq = f0 + 0.7 * np.sin(2 * np.pi * 0.09 * t + wobble[0]) + 0.4 * np.sin(2 * np.pi * 0.23 * t + wobble[1])
    phase = 2 * np.pi * np.cumsum(freq) / fs
    wave = np.sin(phase) + 0.35 * np.sin(2 * phase + wobble[2])
    envelope = (0.05 + 0.07 * severity) * (1.0 + 0.35 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t))
    direction = np.array((-0.3, 0.5, -0.8)) / np.linalg.norm((-0.3, 0.5, -0.8))
    return (envelope * wave)[:, None] * direction


def _sinusoids(t: np.ndarray, freqs_hz: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """[n, e]: sum over k of amps[k, e] * sin(2 pi freqs_hz[k] t + phases[k, e]), with one sine and one
    cosine per frequency shared by all electrodes (cheap: the electrodes differ only in their weights)."""
    w = 2 * np.pi * t[:, None] * freqs_hz[None, :]
    return np.sin(w) @ (amps * np.cos(phases)) + np.cos(w) @ (amps * np.sin(phases))


@functools.lru_cache(maxsize=8)
def _emg_filter(sample_rate_hz: float) -> np.ndarray:
    return sps.butter(2, 20.0, "highpass", fs=sample_rate_hz, output="sos")


def _electrode_noise(
    t: np.ndarray, fs: float, p: PatientParams, resp_phase: float, rng: np.random.Generator
) -> np.ndarray:
    """[n, 9] noise per electrode, mV: baseline wander (breathing + slow drift), powerline and muscle (EMG)."""
    e = len(ELECTRODES)
    # Baseline wander: breathing (in phase with the QRS amplitude modulation) plus three slow drifts.
    freqs = np.concatenate([[p.resp_rate_hz], rng.uniform(0.02, 0.25, 3)])
    amps = np.concatenate([rng.uniform(0.02, 0.08, (1, e)), rng.uniform(0.01, 0.05, (3, e))])
    phases = np.concatenate([resp_phase + rng.normal(0.0, 0.3, (1, e)), rng.uniform(0.0, 2 * np.pi, (3, e))])
    noise = _sinusoids(t, freqs, p.noise_level * amps, phases)
    if p.powerline_hz < 0.45 * fs:  # an anti-aliasing filter would remove it otherwise
        amps = p.noise_level * rng.uniform(0.005, 0.03, (1, e))
        noise += _sinusoids(t, np.array([p.powerline_hz]), amps, rng.uniform(0.0, 2 * np.pi, (1, e)))
    emg = sps.sosfilt(_emg_filter(fs), rng.standard_normal((len(t), e)), axis=0)
    bursts = 1.0 + 2.0 * np.maximum(np.sin(2 * np.pi * rng.uniform(0.03, 0.15) * t + rng.uniform(0, 2 * np.pi)), 0) ** 4
    limb_gain = np.where(np.arange(e) < 3, 1.5, 1.0)  # arm and leg muscles are the usual EMG sources
    return noise + emg * (p.noise_level * 0.008 * limb_gain) * bursts[:, None]


def _qrs_extent(waves: dict[str, _Wave]) -> tuple[float, float]:
    """QRS onset and offset relative to the R wave: the +-2 sigma span of its waves with any voltage."""
    parts = [w for name, w in waves.items() if name in _QRS_WAVES and np.any(w.vector)]
    return min(w.offset_s - 2 * w.sigma_s for w in parts), max(w.offset_s + 2 * w.sigma_s for w in parts)


def synthesize(
    condition: str | Sequence[str],
    duration_s: float,
    sample_rate_hz: float,
    rng: np.random.Generator,
    params: PatientParams | None = None,
) -> tuple[np.ndarray, dict]:
    """One record of a condition or several: signal [time, 12] float32 mV in STANDARD12 order, and the ground
    truth that made it.

    `params` defaults to a fresh patient drawn from `rng`. The truth holds heart_rate_bpm, r_peak_times_s
    (R-wave centres inside the record), rr_intervals_s, qrs_width_s, qt_interval_s (at the mean RR), the
    conditions (and `condition`: their names joined by '+'), mi_territory / mi_phase / mi_leads, bbb_type, sttc_region /
    sttc_leads, axis_deg and powerline_hz.
    """
    conditions = as_conditions(condition)
    if duration_s <= 0 or sample_rate_hz <= 0:
        raise ValueError(f"duration_s and sample_rate_hz must be positive, got {duration_s}, {sample_rate_hz}")
    p = params if params is not None else draw_patient(conditions, rng)
    n = max(int(round(duration_s * sample_rate_hz)), 1)
    t = np.arange(n) / sample_rate_hz
    waves = _place(_beat_waves(conditions, p), p)

    resp_phase = rng.uniform(0.0, 2 * np.pi)  # one breathing cycle drives RSA, QRS gain and baseline wander
    r_times = _beat_times(conditions, p, duration_s, resp_phase, rng)
    beat_gain = 1.0 + 0.05 * np.sin(2 * np.pi * p.resp_rate_hz * r_times + resp_phase)  # breathing moves the heart
    dipole = _render(waves, r_times, beat_gain, p, n, sample_rate_hz)
    if "atrial_fibrillation" in conditions:
        dipole += p.amplitude_scale * _fibrillatory_dipole(t, sample_rate_hz, p.severity, rng)
    electrodes = dipole @ ELECTRODE_VECTORS + _electrode_noise(t, sample_rate_hz, p, resp_phase, rng)
    signal = (electrodes @ ELECTRODES_TO_LEADS).astype(np.float32)

    inside = r_times[(r_times >= 0) & (r_times < duration_s)]
    rr = np.diff(inside)
    mean_rr = float(rr.mean()) if len(rr) else 60.0 / p.heart_rate_bpm
    onset, offset = _qrs_extent(waves)
    t_late = waves["t_late"]
    qt_factor = p.qt_scale * np.cbrt(mean_rr)
    truth = {
        "condition": "+".join(conditions),
        "conditions": conditions,
        "heart_rate_bpm": 60.0 / mean_rr,
        "r_peak_times_s": inside,
        "rr_intervals_s": rr,
        "qrs_width_s": offset - onset,
        "qt_interval_s": (t_late.offset_s + 2.5 * t_late.sigma_s) * qt_factor - onset,
        "mi_territory": p.mi_territory,
        "mi_phase": p.mi_phase if p.mi_territory else None,
        "mi_leads": MI_TERRITORIES[p.mi_territory][1] if p.mi_territory else (),
        "bbb_type": p.bbb_type,
        "sttc_region": p.sttc_region,
        "sttc_leads": STTC_REGIONS[p.sttc_region][1] if p.sttc_region else (),
        "axis_deg": p.axis_deg,
        "powerline_hz": p.powerline_hz,
    }
    return signal, truth


_RECORD_ID = re.compile(r"p(\d+)_r(\d+)")


class SyntheticSource:
    """Synthetic patients with several records each; `cohort` (the label preset's name) decides each patient's
    conditions (`synthetic_cohort`), and the record's labels are those condition names.

    Every record is a pure function of (seed, cohort, record_id), so any process loads the same bytes in any order.
    """

    name = "synthetic"

    def __init__(
        self,
        num_patients: int = 100,
        records_per_patient: int = 3,
        duration_s: float = 20.0,
        sample_rate_hz: float = 500.0,
        seed: int = 0,
        cohort: str = "conditions",
    ):
        if num_patients < 1 or records_per_patient < 1:
            raise ValueError(
                f"need at least one patient and one record each, got {num_patients}, {records_per_patient}"
            )
        if duration_s <= 0 or sample_rate_hz < 100:
            raise ValueError(f"need duration_s > 0 and sample_rate_hz >= 100, got {duration_s}, {sample_rate_hz}")
        self.num_patients = num_patients
        self.records_per_patient = records_per_patient
        self.duration_s = float(duration_s)
        self.sample_rate_hz = float(sample_rate_hz)
        if cohort not in COHORTS:
            raise ValueError(f"unknown synthetic cohort {cohort!r}; expected one of {COHORTS}")
        self.seed = seed
        self.cohort = cohort
        self._patient_digits = max(4, len(str(num_patients - 1)))
        self._record_digits = len(str(records_per_patient - 1))

    def conditions(self, patient: int) -> Conditions:
        return patient_conditions(self.cohort, self.seed, patient)

    def _ref(self, patient: int, record: int) -> RecordRef:
        patient_id = f"p{patient:0{self._patient_digits}d}"
        return RecordRef(
            record_id=f"{patient_id}_r{record:0{self._record_digits}d}",
            patient_id=patient_id,
            labels=self.conditions(patient),
            leads=STANDARD12,
            sample_rate_hz=self.sample_rate_hz,
            duration_s=self.duration_s,
        )

    def refs(self, map_records: Callable = map) -> tuple[list[RecordRef], list[RecordError]]:
        """Every record, sorted by record_id; generated records never fail, so the error list is empty (and
        listing reads nothing, so `map_records` is not used)."""
        refs = [self._ref(p, r) for p in range(self.num_patients) for r in range(self.records_per_patient)]
        return sorted(refs, key=lambda ref: ref.record_id), []

    def load(self, ref: RecordRef) -> Record:
        """Generates the record named by ref.record_id; RecordError if this source has no such record."""
        signal, _ = self.synthesize(*self._parse(ref.record_id))
        return Record(ref=ref, signal=signal, leads=STANDARD12, sample_rate_hz=self.sample_rate_hz)

    def synthesize(self, patient: int, record: int) -> tuple[np.ndarray, dict]:
        """The signal and ground truth of one record (patient traits from the patient seed, jitter per record)."""
        conditions = self.conditions(patient)
        params = draw_patient(conditions, np.random.default_rng([self.seed, patient, 0]), *MI_DRAW[self.cohort])
        rng = np.random.default_rng([self.seed, patient, record + 1])  # 0 is the patient's own stream
        return synthesize(conditions, self.duration_s, self.sample_rate_hz, rng, vary(params, rng))

    def _parse(self, record_id: str) -> tuple[int, int]:
        match = _RECORD_ID.fullmatch(record_id)
        if match is None:
            raise RecordError(record_id, "not a synthetic record id (expected like 'p0007_r1')")
        patient, record = int(match.group(1)), int(match.group(2))
        if patient >= self.num_patients or record >= self.records_per_patient:
            raise RecordError(record_id, f"outside {self.num_patients} patients x {self.records_per_patient} records")
        if self._ref(patient, record).record_id != record_id:
            raise RecordError(record_id, f"expected the id spelled {self._ref(patient, record).record_id!r}")
        return patient, record

"""Which conditions each synthetic patient has: the cohort a label preset asks for.

`conditions`: one condition per patient, round-robin over SYNTHETIC_CLASSES (balanced at the patient level).
`superdiagnostic`: PTB-XL's own mix. Each patient gets one combination of diagnostic superclasses, at the rate
it has among the 390 labelled records of PTB-XL records 1-400 (the shared subset; table below), each superclass
made by its synthetic condition (`core.labels.SYNTHETIC_SUPERCLASS`: CD by bundle branch block, HYP by
hypertrophy, STTC by ST/T change). Atrial fibrillation, which PTB-XL records as a rhythm and not a diagnostic
statement, is added to abnormal patients at the subset's rate and maps to no superclass, so an AF patient is
labelled by its morphology (its conversion writes exactly PTB-XL's superdiagnostic vocabulary).

Patients draw from a two-dimensional Weyl sequence (patient * (golden ratio, sqrt 2) mod 1, offset by the seed)
rather than at random: any run of n patients holds each combination within a few patients of its expected
count, so even small conversions have the documented rates, and a patient's conditions depend on (seed, patient)
alone.
"""

from __future__ import annotations

import numpy as np

from ecg_tfx.core.labels import SYNTHETIC_CLASSES, SYNTHETIC_SUPERCLASS

COHORTS = ("conditions", "superdiagnostic")

# Superclass combinations of PTB-XL records 1-400: scp_codes (ptbxl_database.csv) through diagnostic_class
# (scp_statements.csv), as `sources.ptbxl` reads them. 10 records with no diagnostic statement are left out (the
# ptbxl converter skips them too). Superclasses per record: NORM 243, MI 53, STTC 74, CD 58, HYP 32.
PTBXL_SUBSET_COMBINATIONS: dict[tuple[str, ...], int] = {
    ("NORM",): 238,
    ("STTC",): 39,
    ("CD",): 29,
    ("MI",): 23,
    ("MI", "CD"): 9,
    ("STTC", "HYP"): 9,
    ("MI", "STTC"): 7,
    ("MI", "STTC", "HYP"): 7,
    ("HYP",): 6,
    ("STTC", "CD"): 6,
    ("NORM", "CD"): 5,
    ("CD", "HYP"): 3,
    ("MI", "HYP"): 3,
    ("MI", "STTC", "CD", "HYP"): 2,
    ("MI", "STTC", "CD"): 2,
    ("STTC", "CD", "HYP"): 2,
}
# AFIB (scp_codes) in 7 of the subset's 147 labelled records without NORM; AF is drawn for those patients only.
AF_AMONG_ABNORMAL = 7 / 147

# How a cohort's infarcts look: (phase, territory weights). None of the subset's 53 MI records has an acute
# subendocardial-injury statement (INJAS, INJAL, INJIN, INJLA, INJIL), and their median ST level equals NORM's,
# so the superdiagnostic cohort's infarcts are old; its territories weigh the subset's statements: inferior (IMI,
# ILMI) 29, anterior (ASMI, AMI) 30, lateral (ALMI, LMI) 5. The demo's `conditions` keeps acute ST-elevation
# infarcts in three equally likely territories.
MI_DRAW: dict[str, tuple[str, dict[str, float] | None]] = {
    "conditions": ("acute", None),
    "superdiagnostic": ("old", {"inferior": 29, "anterior": 30, "lateral": 5}),
}

_CONDITION_OF = {superclass: condition for condition, superclass in SYNTHETIC_SUPERCLASS.items() if superclass}
_WEYL = (0.6180339887498949, 0.41421356237309515)  # golden ratio - 1, sqrt(2) - 1: rationally independent
_OFFSET_KEY = 17  # SeedSequence spawn key of the offsets: a stream no patient or record uses


def _combination_bounds() -> tuple[list[tuple[str, ...]], np.ndarray]:
    combinations = list(PTBXL_SUBSET_COMBINATIONS)
    counts = np.array([PTBXL_SUBSET_COMBINATIONS[c] for c in combinations], dtype=np.float64)
    return combinations, np.cumsum(counts) / counts.sum()


def patient_conditions(cohort: str, seed: int, patient: int) -> tuple[str, ...]:
    """The synthetic conditions of patient number `patient` (0-based) in `cohort`."""
    if cohort == "conditions":
        return (SYNTHETIC_CLASSES[patient % len(SYNTHETIC_CLASSES)],)
    if cohort != "superdiagnostic":
        raise ValueError(f"unknown synthetic cohort {cohort!r}; expected one of {COHORTS}")
    offsets = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_OFFSET_KEY,))).random(2)
    u_combination, u_rhythm = np.mod(offsets + patient * np.array(_WEYL), 1.0)
    combinations, bounds = _combination_bounds()
    superclasses = combinations[int(np.searchsorted(bounds, u_combination, side="right"))]
    conditions = tuple(_CONDITION_OF[s] for s in superclasses)
    if "NORM" not in superclasses and u_rhythm < AF_AMONG_ABNORMAL:
        conditions += ("atrial_fibrillation",)
    return conditions

"""Patient-wise splits: no patient ever has records in two splits."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ecg_tfx.core.manifest import SPLITS

# PTB-XL's recommended use of its own stratified folds (patients never cross folds).
FOLD_SPLITS = {**{fold: "train" for fold in range(1, 9)}, 9: "validation", 10: "test"}


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); checks three non-negative parts summing to 1."""
    parts = tuple(float(p) for p in text.split(","))
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6 or parts[0] == 0:
        raise ValueError(f"--split takes three fractions train,validation,test summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def _fold_count(fractions: Sequence[float]) -> int:
    """The fewest folds that express the fractions exactly (0.8,0.1,0.1 -> 10)."""
    for k in range(2, 101):
        if all(abs(f * k - round(f * k)) < 1e-6 for f in fractions):
            return k
    return 100


def stratified_patient_split(
    patient_ids: Sequence[str], strata: Sequence[str], fractions: Sequence[float], seed: int
) -> list[str]:
    """Assigns each record a split; patients are kept whole, classes balanced (StratifiedGroupKFold)."""
    folds = _fold_count(fractions)
    patients = len(set(patient_ids))
    if patients < folds:
        raise ValueError(f"{patients} patients are too few for a {fractions} split ({folds} patient folds)")
    if max(Counter(strata).values()) < folds:  # too few records to stratify: still split by patient
        strata = ["all"] * len(strata)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_split = np.repeat(SPLITS, [round(f * folds) for f in fractions])
    assigned = [""] * len(patient_ids)
    with warnings.catch_warnings():  # a class rarer than the fold count is expected with rare diagnoses
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, members) in enumerate(splitter.split(np.zeros(len(strata)), strata, patient_ids)):
            for i in members:
                assigned[i] = str(fold_split[fold])
    return assigned

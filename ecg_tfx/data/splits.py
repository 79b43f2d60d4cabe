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


MAX_FOLDS = 100  # fractions are dealt as whole patient folds: multiples of 1/k for some k <= MAX_FOLDS


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); ValueError unless the split can be made for some database.

    The rule: three fractions train,validation,test, each >= 0, train > 0, summing to 1 within 1e-6, and each a
    multiple of 1/k for one k <= MAX_FOLDS (k patient folds; 0.01 steps always work). Whether a database has the
    k patients this needs is checked by `stratified_patient_split`.
    """
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6 or parts[0] == 0:
        raise ValueError(f"--split takes 3 fractions train,validation,test summing to 1 (train > 0), got {text!r}")
    fold_count(parts)
    return parts  # type: ignore[return-value]


def fold_count(fractions: Sequence[float]) -> int:
    """The fewest patient folds that express the fractions exactly (0.8,0.1,0.1 -> 10); ValueError past MAX_FOLDS."""
    for k in range(2, MAX_FOLDS + 1):
        if all(abs(f * k - round(f * k)) < 1e-6 for f in fractions):
            return k
    raise ValueError(f"--split fractions {','.join(f'{f:g}' for f in fractions)} need more than {MAX_FOLDS} patient "
                     f"folds; use multiples of 1/k for some k <= {MAX_FOLDS} (e.g. steps of 0.01)")


def stratified_patient_split(
    patient_ids: Sequence[str], strata: Sequence[str], fractions: Sequence[float], seed: int
) -> list[str]:
    """Assigns each record a split; patients are kept whole, classes balanced (StratifiedGroupKFold).

    ValueError when there are fewer patients than the fractions' folds, so no split with a fraction > 0 is empty.
    """
    folds = fold_count(fractions)
    patients = len(set(patient_ids))
    if patients < folds:
        shown = ",".join(f"{f:g}" for f in fractions)
        raise ValueError(f"{patients} patients are too few for --split={shown}: it is dealt as {folds} patient "
                         f"folds, so it needs at least {folds} patients")
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
    empty = [split for split, f in zip(SPLITS, fractions, strict=True) if f > 0 and split not in assigned]
    if empty:  # a guard: StratifiedGroupKFold assigns patients greedily, so it promises no fold a member
        raise ValueError(f"--split={fractions} left {empty} without a record")
    return assigned

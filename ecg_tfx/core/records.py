"""The one record interface every source yields, and the lead vocabulary."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

STANDARD12 = ("i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6")
FRANK = ("vx", "vy", "vz")
ALL_LEADS = STANDARD12 + FRANK

# Other databases' spellings of our lead names, after case and whitespace are dropped ('aVR', ' V1 ' -> avr, v1).
# The one table of lead aliases: conversion (every WFDB header) and `predict` (WFDB, CSV, --leads) read names here.
LEAD_ALIASES = {
    "a_vr": "avr", "a_vl": "avl", "a_vf": "avf",
    "mli": "i", "mlii": "ii", "mliii": "iii",  # MIT-BIH's modified limb leads (electrodes on the torso), used as I-III
    "di": "i", "dii": "ii", "diii": "iii",  # the D-notation of the limb leads (CODE, many European devices)
    "x": "vx", "y": "vy", "z": "vz",  # Frank's orthogonal leads
}


def canonical_lead(name: str) -> str:
    """Our name of a lead: lower-cased, whitespace dropped, then LEAD_ALIASES ('MLII' -> 'ii', ' V1 ' -> 'v1')."""
    key = "".join(name.split()).lower()
    return LEAD_ALIASES.get(key, key)


def standard_order(leads: Sequence[str]) -> list[str]:
    """Sorts lead names in standard order (12 standard, then Frank, then any others by name)."""
    rank = {name: i for i, name in enumerate(ALL_LEADS)}
    return sorted(leads, key=lambda name: (rank.get(name, len(rank)), name))


@dataclasses.dataclass(frozen=True)
class RecordRef:
    """Cheap metadata about a record, known without reading its samples.

    Used to split by patient, choose leads and plan shards before any signal is read.
    """

    record_id: str
    patient_id: str
    labels: tuple[str, ...]  # raw diagnosis names as the source spells them
    leads: tuple[str, ...]  # canonical names of the leads whose samples exist
    sample_rate_hz: float
    duration_s: float
    path: str = ""  # where the source reads it from ('' for generated records)
    fold: int | None = None  # a source-defined split fold (PTB-XL strat_fold), if any
    # The source's parsed header when listing read it (a wfdb.Record for PTB): loading reuses it, so each header is
    # parsed once (wfdb's parser costs about as much as reading the samples). Not part of the ref's identity.
    header: object = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Record:
    """A loaded record: signal float32 in millivolts, shape [time, leads]."""

    ref: RecordRef
    signal: np.ndarray
    leads: tuple[str, ...]
    sample_rate_hz: float

    def __post_init__(self) -> None:
        if self.signal.ndim != 2 or self.signal.shape[1] != len(self.leads):
            raise ValueError(f"signal shape {self.signal.shape} does not match {len(self.leads)} leads")


# Why a record may be skipped (the manifest's `stage` of a skipped record). Only these are expected of real data;
# any other exception is a bug and stops a conversion.
SKIP_STAGES = {
    "read": "a missing, unreadable, garbled or truncated file",
    "nan": "NaN or infinite samples",
    "length": "shorter than one window",
    "label": "no label of the preset (or of a class kept)",
    "leads": "lacks a lead the conversion needs",
}


class RecordError(ValueError):
    """One record cannot be used; carries its path, the reason and the kind (`stage`, a key of SKIP_STAGES)."""

    def __init__(self, path: str, reason: str, stage: str = "read"):
        if stage not in SKIP_STAGES:
            raise ValueError(f"unknown skip stage {stage!r}; one of {sorted(SKIP_STAGES)}")
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.stage = stage

    def __reduce__(self):  # crosses process boundaries (listing in conversion workers) with all three fields
        return RecordError, (self.path, self.reason, self.stage)

"""The one record interface every source yields, and the lead vocabulary."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

STANDARD12 = ("i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6")
FRANK = ("vx", "vy", "vz")
ALL_LEADS = STANDARD12 + FRANK

_ALIASES = {"avr": "avr", "a_vr": "avr", "avl": "avl", "avf": "avf", "x": "vx", "y": "vy", "z": "vz"}


def canonical_lead(name: str) -> str:
    """Lower-cases a lead name and maps common spellings ('aVR', 'I', 'x') to ours."""
    key = name.strip().lower().replace(" ", "")
    return _ALIASES.get(key, key)


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


class RecordError(ValueError):
    """One record cannot be read; carries its path and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

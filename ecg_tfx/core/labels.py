"""The label vocabularies and presets: the one home for class names.

A preset maps a record's raw labels (as its source spells them) to the class names a model learns.
A record whose labels map to nothing is skipped, and counted, by the converter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

PTB_MI = "Myocardial infarction"
PTB_HEALTHY = "Healthy control"
PTB_UNKNOWN = "n/a"

PTBXL_SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")

SYNTHETIC_CLASSES = ("normal", "myocardial_infarction", "bundle_branch_block", "hypertrophy", "atrial_fibrillation")
# Everything the generator can draw: the `conditions` preset's five classes and ST/T change (in the
# `superdiagnostic` cohort only, so the `conditions` vocabulary stays as the demo and its runs know it).
SYNTHETIC_CONDITIONS = (*SYNTHETIC_CLASSES, "st_t_change")

# A synthetic condition's PTB-XL diagnostic superclass. Atrial fibrillation has none: in PTB-XL, AFIB is a rhythm
# statement, not a diagnostic one, so an AF record is labelled by its other conditions (its ECG morphology).
SYNTHETIC_SUPERCLASS: dict[str, str | None] = {
    "normal": "NORM",
    "myocardial_infarction": "MI",
    "st_t_change": "STTC",
    "bundle_branch_block": "CD",
    "hypertrophy": "HYP",
    "atrial_fibrillation": None,
}


@dataclasses.dataclass(frozen=True)
class LabelPreset:
    """How raw labels become classes.

    `classes` fixes the vocabulary and its order; None means "every class seen in the data, sorted".
    """

    name: str
    source: str
    classes: tuple[str, ...] | None
    multi_label: bool
    to_classes: Callable[[Sequence[str]], tuple[str, ...]]


def _keep(allowed: Sequence[str]) -> Callable[[Sequence[str]], tuple[str, ...]]:
    return lambda raw: tuple(label for label in raw if label in allowed)


def _first_known(raw: Sequence[str]) -> tuple[str, ...]:
    return tuple(label for label in raw[:1] if label != PTB_UNKNOWN)


def _first_superclass(raw: Sequence[str]) -> tuple[str, ...]:
    """Single-label PTB-XL: NORM only if nothing else, else the first abnormal superclass in vocabulary order."""
    abnormal = [c for c in PTBXL_SUPERCLASSES if c in raw and c != "NORM"]
    if abnormal:
        return (abnormal[0],)
    return ("NORM",) if "NORM" in raw else ()


def _superclasses(raw: Sequence[str]) -> tuple[str, ...]:
    """Synthetic conditions -> their PTB-XL superclasses, in PTBXL_SUPERCLASSES order (as PTB-XL's multi-hot)."""
    mapped = {SYNTHETIC_SUPERCLASS.get(label) for label in raw}
    return tuple(c for c in PTBXL_SUPERCLASSES if c in mapped)


PRESETS: dict[tuple[str, str], LabelPreset] = {
    (p.source, p.name): p
    for p in (
        LabelPreset("mi_vs_healthy", "ptb", (PTB_HEALTHY, PTB_MI), False, _keep((PTB_HEALTHY, PTB_MI))),
        LabelPreset("diagnoses", "ptb", None, False, _first_known),
        LabelPreset("superdiagnostic", "ptbxl", PTBXL_SUPERCLASSES, True, _keep(PTBXL_SUPERCLASSES)),
        LabelPreset("superdiagnostic_single", "ptbxl", PTBXL_SUPERCLASSES, False, _first_superclass),
        LabelPreset("conditions", "synthetic", SYNTHETIC_CLASSES, False, _keep(SYNTHETIC_CLASSES)),
        LabelPreset("superdiagnostic", "synthetic", PTBXL_SUPERCLASSES, True, _superclasses),
    )
}

DEFAULT_PRESET = {"ptb": "mi_vs_healthy", "ptbxl": "superdiagnostic", "synthetic": "conditions"}


def get_preset(source: str, name: str | None) -> LabelPreset:
    """Returns the named preset (or the source's default), checking it belongs to the source."""
    preset = PRESETS.get((source, name or DEFAULT_PRESET[source]))
    if preset is None:
        choices = sorted(p.name for p in PRESETS.values() if p.source == source)
        raise ValueError(f"label preset {name!r} is not one of {choices} for source {source!r}")
    return preset

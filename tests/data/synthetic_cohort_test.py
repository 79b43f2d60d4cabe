"""Synthetic cohorts: the `conditions` round-robin, and the `superdiagnostic` cohort with PTB-XL's superclass
co-occurrence, converted to exactly the vocabulary and multi-hot labels of a PTB-XL superdiagnostic conversion."""

from __future__ import annotations

import pathlib
from collections import Counter

import pytest
import tensorflow as tf

from ecg_tfx.core import schema
from ecg_tfx.core.labels import PTBXL_SUPERCLASSES, SYNTHETIC_CLASSES, SYNTHETIC_SUPERCLASS, get_preset
from ecg_tfx.data import conversion
from ecg_tfx.data.conversion import ConversionConfig
from ecg_tfx.data.sources.synthetic import SyntheticSource
from ecg_tfx.data.sources.synthetic_cohort import AF_AMONG_ABNORMAL, PTBXL_SUBSET_COMBINATIONS, patient_conditions


def superclasses(conditions: tuple[str, ...]) -> tuple[str, ...]:
    mapped = {SYNTHETIC_SUPERCLASS[c] for c in conditions}
    return tuple(c for c in PTBXL_SUPERCLASSES if c in mapped)


def test_conditions_cohort_is_the_round_robin_of_the_five_classes() -> None:
    assert [patient_conditions("conditions", 3, p) for p in range(6)] == [
        (c,) for c in (*SYNTHETIC_CLASSES, SYNTHETIC_CLASSES[0])]


@pytest.mark.parametrize("seed", [0, 5])
def test_superdiagnostic_cohort_has_the_ptbxl_subset_combinations_at_its_rates(seed: int) -> None:
    """3900 patients are ten subsets: each superclass combination within 3 patients of ten times its count, AF
    only with abnormal morphology, at 7 in 147 of those."""
    cohort = [patient_conditions("superdiagnostic", seed, p) for p in range(3900)]
    found = Counter(superclasses(c) for c in cohort)
    assert set(found) == set(PTBXL_SUBSET_COMBINATIONS)
    for combination, count in PTBXL_SUBSET_COMBINATIONS.items():
        assert abs(found[combination] - 10 * count) <= 3, (combination, found[combination])
    with_af = [c for c in cohort if "atrial_fibrillation" in c]
    abnormal = [c for c in cohort if "normal" not in c]
    assert all("normal" not in c for c in with_af)
    assert abs(len(with_af) - AF_AMONG_ABNORMAL * len(abnormal)) <= 3


def test_seeds_give_other_patients_the_same_mix() -> None:
    first, other = ([patient_conditions("superdiagnostic", seed, p) for p in range(200)] for seed in (0, 1))
    assert first != other
    assert abs(sum("normal" in c for c in first) - sum("normal" in c for c in other)) <= 3


def test_superdiagnostic_conversion_writes_ptbxl_superdiagnostic_labels(tmp_path: pathlib.Path) -> None:
    """The manifest's vocabulary, order and multi-label flag are the PTB-XL preset's, every example's labels are
    its patient's superclasses (AF adds none), and the label counts are the cohort's."""
    config = ConversionConfig(labels="superdiagnostic", synthetic_patients=40, synthetic_records_per_patient=1,
                              synthetic_duration_s=10, synthetic_sample_rate=100, sample_rate=100)
    manifest = conversion.run(config, str(tmp_path))
    ptbxl = get_preset("ptbxl", "superdiagnostic")
    assert (manifest.labels, manifest.multi_label, manifest.label_preset) == (ptbxl.classes, True, "superdiagnostic")
    source = SyntheticSource(40, 1, 10.0, 100.0, 0, "superdiagnostic")
    expected = {f"p{p:04d}_r0": superclasses(source.conditions(p)) for p in range(40)}
    seen = {}
    for path in sorted(tmp_path.glob("*.tfrecord")):
        for record in tf.data.TFRecordDataset(str(path)):
            example = schema.decode_example(record.numpy())
            assert example["label_ids"] == [manifest.labels.index(n) for n in example["label_names"]]
            seen[example["record_id"]] = tuple(example["label_names"])
    assert seen == expected
    counted: Counter[str] = Counter()
    for split in manifest.splits.values():
        counted.update(split.class_records)
    assert counted == Counter(name for names in expected.values() for name in names)

"""Split fractions are checked up front: every accepted split gives each fraction > 0 at least one patient."""

from __future__ import annotations

import pytest

from ecg_tfx.data import splits


@pytest.mark.parametrize("text, folds", [("0.8,0.1,0.1", 10), ("0.6,0.2,0.2", 5), ("0.34,0.33,0.33", 100),
                                         ("0.99,0.01,0", 100), ("1,0,0", 2)])
def test_fractions_in_at_most_100_folds_are_accepted(text, folds):
    fractions = splits.parse_fractions(text)
    assert splits.fold_count(fractions) == folds


@pytest.mark.parametrize("text, message", [
    ("0.995,0.004,0.001", "need more than 100 patient folds"),  # silently gave empty splits before
    ("0.333,0.333,0.334", "need more than 100 patient folds"),  # raised IndexError before
    ("0.8,0.1", "3 fractions"),
    ("0.8,0.1,0.0999", "summing to 1"),
    ("0,0.5,0.5", "train > 0"),
    ("0.9,-0.1,0.2", "3 fractions"),
    ("a,b,c", "3 fractions"),
])
def test_fractions_that_cannot_be_dealt_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        splits.parse_fractions(text)


def split_of(patients: int, fractions: tuple[float, float, float]) -> list[str]:
    ids = [f"p{i}" for i in range(patients) for _ in range(2)]
    return splits.stratified_patient_split(ids, ["a", "b"] * patients, fractions, seed=0)


def test_each_fraction_gets_a_patient_from_exactly_the_fold_count():
    assigned = split_of(10, (0.8, 0.1, 0.1))
    assert {name: assigned.count(name) // 2 for name in set(assigned)} == {"train": 8, "validation": 1, "test": 1}
    with pytest.raises(ValueError, match="9 patients are too few for --split=0.8,0.1,0.1: .* at least 10 patients"):
        split_of(9, (0.8, 0.1, 0.1))
    with pytest.raises(ValueError, match="99 patients are too few"):
        split_of(99, (0.98, 0.01, 0.01))
    assert set(split_of(100, (0.98, 0.01, 0.01))) == {"train", "validation", "test"}

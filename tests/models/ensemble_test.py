"""Seed ensembles: the mean of the members' probabilities, and runs of different tasks refused by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ecg_tfx.core.model_spec import FILENAME, ModelSpec
from ecg_tfx.models.ensemble import average, load_runs


def test_average_is_the_mean_of_the_members_probabilities(tiny_run, tiny_run_seed1):
    members, spec = load_runs([str(tiny_run), str(tiny_run_seed1)])
    assert spec == ModelSpec.load(str(tiny_run))
    ensemble = average(members)
    windows = np.random.default_rng(0).normal(size=(3, spec.input_samples, len(spec.leads))).astype("float32")
    outputs = [member(windows, training=False).numpy() for member in members]
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3  # two seeds, two models
    np.testing.assert_allclose(ensemble(windows, training=False).numpy(), np.mean(outputs, axis=0), atol=1e-7)
    assert ensemble.count_params() == 2 * members[0].count_params()
    assert average(members[:1]) is members[0]  # one run is served as before


def _copy_with(run_dir, tmp_path, name: str, **changes) -> str:
    """A copy of a run folder whose model_spec.json has `changes` (preprocessing.* keys go into preprocessing)."""
    copy = tmp_path / name
    shutil.copytree(run_dir, copy)
    value = json.loads((copy / FILENAME).read_text())
    for key, item in changes.items():
        *parents, leaf = key.split("__")
        target = value
        for parent in parents:
            target = target[parent]
        target[leaf] = item
    (copy / FILENAME).write_text(json.dumps(value))
    ModelSpec.load(str(copy))  # still a valid spec: only the difference is refused
    return str(copy)


@pytest.mark.parametrize(("changes", "named"), [
    ({"labels": ["a", "b", "c", "d", "e"]}, "labels differs"),
    ({"sample_rate_hz": 250, "preprocessing__sample_rate_hz": 250}, "sample_rate_hz differs: 500 in"),
    ({"leads": ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v6", "v5"]}, "leads differs"),
    ({"window_samples": 4000, "stride_samples": 4000}, "window_samples differs: 5000 in"),
    ({"preprocessing__highpass_hz": 1.0}, "preprocessing.highpass_hz differs: 0.5 in"),
    ({"multi_label": True}, "multi_label differs"),
])
def test_runs_of_another_task_are_refused_naming_the_difference(tiny_run, tmp_path, changes, named):
    other = _copy_with(tiny_run, tmp_path, "other", **changes)
    with pytest.raises(ValueError, match=f"must share one model spec, but {named}") as raised:
        load_runs([str(tiny_run), other])
    assert str(tiny_run) in str(raised.value) and other in str(raised.value)


def test_a_run_given_twice_is_refused(tiny_run):
    with pytest.raises(ValueError, match="given twice"):
        load_runs([str(tiny_run), str(tiny_run)])

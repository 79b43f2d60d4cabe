"""Warm start from a finished run (`tiny_run`): same classes, other classes, an incompatible input."""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np
import pytest

from ecg_tfx.core import storage
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.models import build_model
from ecg_tfx.models.parts import body_layers, head_layers
from ecg_tfx.training.warm_start import warm_start


def _build(spec: ModelSpec, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_model(spec.model, len(spec.leads), len(spec.labels), spec.multi_label, spec.sample_rate_hz,
                       spec.input_samples)


def _weights(layers: list[keras.layers.Layer]) -> list[np.ndarray]:
    return [w for layer in layers for w in layer.get_weights()]


def test_same_classes_start_from_every_pretrained_weight(tiny_run):
    spec = ModelSpec.load(str(tiny_run))
    pretrained = keras.saving.load_model(tiny_run / "model.keras", compile=False)
    model = _build(spec, seed=7)
    record = warm_start(model, spec, str(tiny_run))
    for got, expected in zip(model.get_weights(), pretrained.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)
    x = np.random.default_rng(0).normal(size=(2, spec.input_samples, len(spec.leads))).astype(np.float32)
    np.testing.assert_array_equal(model(x, training=False), pretrained(x, training=False))
    assert record["head"].startswith("reused") and record["new_layers"] == []
    assert record["model_file"] == "model.keras" and record["run_dir"] == str(tiny_run)
    assert record["model_sha256"] == storage.sha256(str(tiny_run / "model.keras"))
    assert record["labels"] == list(spec.labels)


def test_other_classes_keep_the_body_and_get_a_new_head(tiny_run):
    spec = ModelSpec.load(str(tiny_run))
    new_spec = dataclasses.replace(spec, labels=("NORM", "MI", "STTC"), multi_label=True)
    pretrained = keras.saving.load_model(tiny_run / "model.keras", compile=False)
    fresh = _build(new_spec, seed=7)
    model = _build(new_spec, seed=7)  # the same initialization as `fresh`
    record = warm_start(model, new_spec, str(tiny_run))
    for got, expected in zip(_weights(body_layers(model)), _weights(body_layers(pretrained)), strict=True):
        np.testing.assert_array_equal(got, expected)
    for got, initial in zip(_weights(head_layers(model)), _weights(head_layers(fresh)), strict=True):
        np.testing.assert_array_equal(got, initial)  # the head is untouched: freshly initialized
    assert model.output_shape == (None, 3) and model.layers[-1].activation.__name__ == "sigmoid"
    assert not np.array_equal(head_layers(model)[0].get_weights()[0], head_layers(pretrained)[0].get_weights()[0])
    assert record["head"].startswith("new")
    assert record["new_layers"] == [layer.name for layer in head_layers(model) if layer.weights]
    assert record["reused_layers"] == [layer.name for layer in body_layers(model) if layer.weights]


@pytest.mark.parametrize("field, value", [("model", "resnet1d"), ("leads", ("I",)), ("input_samples", 1000),
                                          ("sample_rate_hz", 250)])
def test_an_incompatible_run_is_refused_naming_the_difference(tiny_run, field, value):
    spec = ModelSpec.load(str(tiny_run))
    changes = {field: value}
    if field == "sample_rate_hz":
        changes["preprocessing"] = dataclasses.replace(spec.preprocessing, sample_rate_hz=250)
    new_spec = dataclasses.replace(spec, **changes)
    expected = f"its {field} is {getattr(spec, field)!r} but this run's is {value!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        warm_start(_build(new_spec, seed=0), new_spec, str(tiny_run))


def test_a_folder_that_is_not_a_finished_run_is_refused(tiny_run, tmp_path):
    spec = ModelSpec.load(str(tiny_run))
    spec.save(str(tmp_path))  # a spec but no model.keras: an unfinished run
    with pytest.raises(FileNotFoundError, match="not a finished run: .*model.keras is missing"):
        warm_start(_build(spec, seed=0), spec, str(tmp_path))

"""The body/head split of every registered model: the head is every layer that depends on the classes."""

from __future__ import annotations

import keras
import pytest

from ecg_tfx.models import MODELS, build_model
from ecg_tfx.models.parts import OUTPUT_NAME, body_layers, head_layers


def _shapes(layers: list[keras.layers.Layer]) -> list[list[tuple[int, ...]]]:
    return [[tuple(w.shape) for w in layer.weights] for layer in layers]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_head_holds_every_weight_that_depends_on_the_classes(name: str) -> None:
    two, five = build_model(name, 12, 2, False, 100.0), build_model(name, 12, 5, True, 100.0)
    assert _shapes(body_layers(two)) == _shapes(body_layers(five))  # the body does not see the classes
    assert _shapes(head_layers(two)) != _shapes(head_layers(five))
    assert head_layers(two)[-1].name == OUTPUT_NAME == two.layers[-1].name  # the head ends the model
    assert len(body_layers(two)) + len(head_layers(two)) == len(two.layers) - 1  # every layer but the input
    # The head classifies pooled features: no convolution in it, no dense layer in the body.
    assert not any(isinstance(layer, keras.layers.Conv1D) for layer in head_layers(two))
    assert not any(isinstance(layer, keras.layers.Dense) for layer in body_layers(two))


@pytest.mark.parametrize("name, head_dense_units", [("cnn", [256, 128, 3]), ("resnet1d", [128, 3]),
                                                    ("inception1d", [128, 3]), ("features", [64, 32, 3])])
def test_each_architecture_has_its_documented_head(name: str, head_dense_units: list[int]) -> None:
    model = build_model(name, 12, 3, False, 100.0)
    assert [layer.units for layer in head_layers(model) if isinstance(layer, keras.layers.Dense)] == head_dense_units
    body_weights = sum(len(layer.trainable_weights) for layer in body_layers(model))
    assert body_weights == 0 if name == "features" else body_weights > 0  # the features are not learned

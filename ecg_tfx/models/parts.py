"""A registered model's two parts: the body (signal -> features) and the head (features -> class probabilities).

Every builder names its head layers `head_*` and its output layer `probabilities`; everything else is the body.
cnn's head is its two dense blocks, resnet1d's and inception1d's the benchmark head from the global pooling on
(`benchmark_head`); the features model's body (the hand-crafted features) has no trainable weights, so all it
learns is head. The head is what depends on the classes: a warm start with other classes keeps the body and builds a
new head (`training.warm_start`).
"""

from __future__ import annotations

import keras

HEAD_PREFIX = "head_"
OUTPUT_NAME = "probabilities"


def is_head(layer: keras.layers.Layer) -> bool:
    return layer.name.startswith(HEAD_PREFIX) or layer.name == OUTPUT_NAME


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The head's layers, in the model's order."""
    return [layer for layer in model.layers if is_head(layer)]


def body_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The body's layers (the input excluded), in the model's order."""
    return [layer for layer in model.layers if not is_head(layer) and not isinstance(layer, keras.layers.InputLayer)]

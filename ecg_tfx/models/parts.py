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
# Every model's BatchNormalization: PyTorch's defaults (its momentum 0.1 is 0.9 in Keras). Keras's default momentum
# 0.99 keeps 0.99^150 = 22% of the initial statistics (mean 0, variance 1) after the demo's 150 steps, and averages
# over weights long gone: the served model then differs from the trained one (the seed CNN's demo on float32: 0.70
# of test windows right with the moving statistics, 0.97 with each batch's own).
PYTORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}


def is_head(layer: keras.layers.Layer) -> bool:
    return layer.name.startswith(HEAD_PREFIX) or layer.name == OUTPUT_NAME


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The head's layers, in the model's order."""
    return [layer for layer in model.layers if is_head(layer)]


def body_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The body's layers (the input excluded), in the model's order."""
    return [layer for layer in model.layers if not is_head(layer) and not isinstance(layer, keras.layers.InputLayer)]

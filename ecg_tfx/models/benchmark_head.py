"""The PTB-XL benchmark's classification head (fastai `create_head1d`), shared by resnet1d and inception1d.

    concat(global max pool, global average pool) -> BN + Dropout(p/2) + Dense(128) + ReLU
    -> BN + Dropout(p) + Dense(num_classes)

BatchNorm uses PyTorch's defaults, as every model here (`parts.PYTORCH_BN`).
"""

from __future__ import annotations

import keras

from ecg_tfx.models.cnn import probability_output
from ecg_tfx.models.parts import HEAD_PREFIX, PYTORCH_BN

HEAD_UNITS = 128


def benchmark_head(x: keras.KerasTensor, num_classes: int, multi_label: bool, dropout: float) -> keras.KerasTensor:
    """Probabilities from features [batch, time, channels]; `dropout` is the last rate p (the first is p/2).

    Every layer is named `head_*` (`models.parts`): a warm start with other classes replaces all of them."""
    pooled = [keras.layers.GlobalMaxPooling1D(name=f"{HEAD_PREFIX}max_pool")(x),
              keras.layers.GlobalAveragePooling1D(name=f"{HEAD_PREFIX}average_pool")(x)]
    x = keras.layers.Concatenate(name=f"{HEAD_PREFIX}concat_pool")(pooled)
    x = keras.layers.BatchNormalization(**PYTORCH_BN, name=f"{HEAD_PREFIX}bn_0")(x)
    x = keras.layers.Dropout(dropout / 2, name=f"{HEAD_PREFIX}dropout_0")(x)
    x = keras.layers.Dense(HEAD_UNITS, activation="relu", name=f"{HEAD_PREFIX}dense")(x)
    x = keras.layers.BatchNormalization(**PYTORCH_BN, name=f"{HEAD_PREFIX}bn_1")(x)
    x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout_1")(x)
    return probability_output(x, num_classes, multi_label)

"""The PTB-XL benchmark's classification head (fastai `create_head1d`), shared by resnet1d and inception1d.

    concat(global max pool, global average pool) -> BN + Dropout(p/2) + Dense(128) + ReLU
    -> BN + Dropout(p) + Dense(num_classes)

BatchNorm everywhere in these ports uses PyTorch's defaults: `PYTORCH_BN` (momentum 0.1 there is 0.9 in Keras).
"""

from __future__ import annotations

import keras

from ecg_tfx.models.cnn import probability_output

PYTORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}
HEAD_UNITS = 128


def benchmark_head(x: keras.KerasTensor, num_classes: int, multi_label: bool, dropout: float) -> keras.KerasTensor:
    """Probabilities from features [batch, time, channels]; `dropout` is the last rate p (the first is p/2)."""
    x = keras.layers.Concatenate()([keras.layers.GlobalMaxPooling1D()(x), keras.layers.GlobalAveragePooling1D()(x)])
    x = keras.layers.BatchNormalization(**PYTORCH_BN)(x)
    x = keras.layers.Dropout(dropout / 2)(x)
    x = keras.layers.Dense(HEAD_UNITS, activation="relu")(x)
    x = keras.layers.BatchNormalization(**PYTORCH_BN)(x)
    x = keras.layers.Dropout(dropout)(x)
    return probability_output(x, num_classes, multi_label)

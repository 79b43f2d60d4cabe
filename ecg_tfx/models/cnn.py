"""The seed project's plain 1D CNN: four conv blocks, global average pooling, two dense blocks.

Layer sequence (ReLU on every Conv1D/Dense but the last, 'same' padding, MaxPooling1D(2), dropout 0.3 by
default — the seed's value is not documented, 0.3 is the common choice for this design):

    Conv1D(64, 15)+BN+MaxPool+Dropout, Conv1D(128, 10)+BN+MaxPool+Dropout, Conv1D(256, 5)+BN+MaxPool+Dropout,
    Conv1D(512, 3)+BN+GlobalAveragePooling+Dropout, Dense(256)+BN+Dropout, Dense(128)+BN+Dropout,
    Dense(num_classes) with softmax (single-label) or sigmoid (multi-label), computed in float32.

BatchNormalization has PyTorch's defaults (`parts.PYTORCH_BN`: momentum 0.9, epsilon 1e-5), not the seed's Keras
ones (0.99, 1e-3): with momentum 0.99 the moving statistics lag the weights on short runs (parts.py says how much).

Parameter counts (computed with `model.count_params()`, BN moving statistics included):
12 leads / 2 classes: 821,314 (818,626 trainable); 1 lead / 2 classes: 810,754 (808,066 trainable).
"""

from __future__ import annotations

import keras

from ecg_tfx.models.parts import HEAD_PREFIX, OUTPUT_NAME, PYTORCH_BN

DEFAULT_DROPOUT = 0.3
_CONV_BLOCKS = ((64, 15), (128, 10), (256, 5), (512, 3))
_DENSE_UNITS = (256, 128)


def probability_output(x: keras.KerasTensor, num_classes: int, multi_label: bool) -> keras.KerasTensor:
    """Final Dense layer giving probabilities; float32 even under a mixed-precision policy (stable softmax/loss)."""
    activation = "sigmoid" if multi_label else "softmax"
    return keras.layers.Dense(num_classes, activation=activation, dtype="float32", name=OUTPUT_NAME)(x)


def signal_input(num_leads: int, window_samples: int | None) -> keras.KerasTensor:
    """Input for a preprocessed float32 signal [batch, time, leads]; time is None unless fixed."""
    return keras.Input(shape=(window_samples, num_leads), dtype="float32", name="signal")


def build_cnn(
    num_leads: int,
    num_classes: int,
    multi_label: bool,
    sample_rate_hz: float,
    window_samples: int | None = None,
    dropout: float | None = None,
) -> keras.Model:
    """Builds the seed CNN; `sample_rate_hz` is accepted for the registry API but the design has fixed kernels."""
    del sample_rate_hz
    rate = DEFAULT_DROPOUT if dropout is None else dropout
    inputs = signal_input(num_leads, window_samples)
    x = inputs
    for i, (filters, kernel) in enumerate(_CONV_BLOCKS):
        x = keras.layers.Conv1D(filters, kernel, padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization(**PYTORCH_BN)(x)
        last = i == len(_CONV_BLOCKS) - 1
        x = keras.layers.GlobalAveragePooling1D()(x) if last else keras.layers.MaxPooling1D(2)(x)
        x = keras.layers.Dropout(rate)(x)
    for i, units in enumerate(_DENSE_UNITS):  # the head (`models.parts`): the dense blocks and the output
        x = keras.layers.Dense(units, activation="relu", name=f"{HEAD_PREFIX}dense_{i}")(x)
        x = keras.layers.BatchNormalization(**PYTORCH_BN, name=f"{HEAD_PREFIX}bn_{i}")(x)
        x = keras.layers.Dropout(rate, name=f"{HEAD_PREFIX}dropout_{i}")(x)
    outputs = probability_output(x, num_classes, multi_label)
    return keras.Model(inputs, outputs, name="cnn")

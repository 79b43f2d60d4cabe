"""Keras port of `inception1d` from the PTB-XL benchmark (Strodthoff et al. 2020).

Matches helme/ecg_ptbxl_benchmarking `code/models/inception1d.py` as built by `fastai_model.py`
(kernel_size=8*5=40, depth 6, bottleneck 32, 32 filters per branch, residual every 3 blocks, ps_head=0.5,
lin_ftrs_head=[128]):

    block:    Conv(32, 1) bottleneck -> three Conv(32, k) branches, k = 39, 19, 9; plus MaxPool(3, stride 1)
              -> Conv(32, 1) on the block's input; concatenate (128 channels), BN, ReLU
    backbone: 6 blocks; after blocks 3 and 6 a shortcut Conv(128, 1) + BN of the input 3 blocks back is added,
              then ReLU
    head:     `benchmark_head`, p = 0.5 (as resnet1d)

Every convolution is bias-free with stride 1 and an odd kernel, so Keras 'same' padding equals PyTorch's
`padding=(k-1)//2`. BatchNorm uses PyTorch's defaults. Trainable
parameters for 12 leads / 5 classes: 507,653, counted by hand from the reference code.
"""

from __future__ import annotations

import keras

from ecg_tfx.models.benchmark_head import benchmark_head
from ecg_tfx.models.cnn import signal_input
from ecg_tfx.models.parts import PYTORCH_BN

DEFAULT_DROPOUT = 0.5
BRANCH_FILTERS = 32
BOTTLENECK = 32
KERNELS = (39, 19, 9)
DEPTH = 6
RESIDUAL_EVERY = 3


def _conv(x: keras.KerasTensor, filters: int, kernel: int) -> keras.KerasTensor:
    return keras.layers.Conv1D(filters, kernel, padding="same", use_bias=False)(x)


def _inception_block(x: keras.KerasTensor) -> keras.KerasTensor:
    """Bottleneck, three kernel sizes and a max-pool branch, concatenated; BN + ReLU."""
    bottled = _conv(x, BOTTLENECK, 1)
    branches = [_conv(bottled, BRANCH_FILTERS, k) for k in KERNELS]
    pooled = keras.layers.MaxPooling1D(3, strides=1, padding="same")(x)
    branches.append(_conv(pooled, BRANCH_FILTERS, 1))
    y = keras.layers.Concatenate()(branches)
    y = keras.layers.BatchNormalization(**PYTORCH_BN)(y)
    return keras.layers.ReLU()(y)


def build_inception1d(
    num_leads: int,
    num_classes: int,
    multi_label: bool,
    sample_rate_hz: float,
    window_samples: int | None = None,
    dropout: float | None = None,
) -> keras.Model:
    """Builds inception1d; `dropout` is the head's last rate p (the first is p/2, as in fastai's head)."""
    del sample_rate_hz  # the benchmark ran at 100 Hz; kernels are in samples, not seconds
    rate = DEFAULT_DROPOUT if dropout is None else dropout
    inputs = signal_input(num_leads, window_samples)
    x = residual = inputs
    channels = BRANCH_FILTERS * (len(KERNELS) + 1)
    for depth in range(DEPTH):
        x = _inception_block(x)
        if depth % RESIDUAL_EVERY == RESIDUAL_EVERY - 1:
            shortcut = keras.layers.BatchNormalization(**PYTORCH_BN)(_conv(residual, channels, 1))
            x = residual = keras.layers.ReLU()(keras.layers.Add()([x, shortcut]))
    return keras.Model(inputs, benchmark_head(x, num_classes, multi_label, rate), name="inception1d")

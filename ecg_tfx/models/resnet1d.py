"""Keras port of `resnet1d_wang` from the PTB-XL benchmark (Strodthoff et al. 2020).

Matches helme/ecg_ptbxl_benchmarking `code/models/resnet1d.py` as built by `fastai_model.py` (kernel_size=5,
ps_head=0.5, lin_ftrs_head=[128]): note the benchmark's implementation uses 128 filters throughout
(`inplanes=128, fix_feature_dim=True`), a kernel-7 stem and kernels 5/3 inside each block — not the 64/128/128,
8/5/3 of Wang et al.'s original.

    stem:   Conv1D(128, 7, stride 1, no bias) + BN + ReLU (no stem pooling)
    blocks: 3 BasicBlocks, strides 1, 2, 2: Conv(128, 5, stride) + BN + ReLU + Conv(128, 3) + BN, plus the
            shortcut (Conv(128, 1, stride) + BN when the stride is 2), add, ReLU
    head:   `benchmark_head` (concat pooling, BN, dropout, Dense(128), BN, dropout, Dense), p = 0.5

BatchNorm uses PyTorch's defaults. Strided convolutions pad
explicitly by (kernel-1)//2 on both sides as PyTorch does (Keras 'same' would pad asymmetrically and misalign
them with the strided 1x1 shortcut). All layers lower to TFLite builtins (CONV_2D, ADD, MEAN, REDUCE_MAX, ...).
Parameter count for 12 leads / 5 classes (computed): 476,421, of which 473,349 trainable — the same count as
the PyTorch model (the rest are BN moving statistics, which PyTorch keeps as buffers).
"""

from __future__ import annotations

import keras

from ecg_tfx.models.benchmark_head import benchmark_head
from ecg_tfx.models.cnn import signal_input
from ecg_tfx.models.parts import PYTORCH_BN

DEFAULT_DROPOUT = 0.5
FILTERS = 128
STEM_KERNEL = 7
BLOCK_KERNELS = (5, 3)
BLOCK_STRIDES = (1, 2, 2)


def strided_conv_dtype() -> str | None:
    """The strided convolutions' dtype: float32 under mixed_bfloat16, else the global policy's (None).

    On this CPU (oneDNN, AMX) the bfloat16 gradient of a stride-2 convolution's kernel is now and then not finite
    for the same inputs, weights and dropout draws (9 of 200 repeats of one step), and AdamW then turns that
    kernel, and within a step or two every weight, into NaN: the diverged bf16 runs (pipelines/RESULTS.md).
    """
    return "float32" if keras.mixed_precision.global_policy().name == "mixed_bfloat16" else None


def _conv(x: keras.KerasTensor, filters: int, kernel: int, stride: int = 1) -> keras.KerasTensor:
    """Bias-free convolution padded like PyTorch's `padding=(kernel-1)//2`; strided ones in `strided_conv_dtype`."""
    if stride == 1:
        return keras.layers.Conv1D(filters, kernel, padding="same", use_bias=False)(x)
    pad = (kernel - 1) // 2
    if pad:
        x = keras.layers.ZeroPadding1D(pad)(x)
    return keras.layers.Conv1D(filters, kernel, strides=stride, padding="valid", use_bias=False,
                               dtype=strided_conv_dtype())(x)


def _basic_block(x: keras.KerasTensor, filters: int, stride: int) -> keras.KerasTensor:
    """BasicBlock1d: two convolutions with BN, a (projected when needed) shortcut, add, ReLU."""
    shortcut = x
    y = _conv(x, filters, BLOCK_KERNELS[0], stride)
    y = keras.layers.BatchNormalization(**PYTORCH_BN)(y)
    y = keras.layers.ReLU()(y)
    y = _conv(y, filters, BLOCK_KERNELS[1])
    y = keras.layers.BatchNormalization(**PYTORCH_BN)(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride)
        shortcut = keras.layers.BatchNormalization(**PYTORCH_BN)(shortcut)
    y = keras.layers.Add()([y, shortcut])
    return keras.layers.ReLU()(y)


def build_resnet1d(
    num_leads: int,
    num_classes: int,
    multi_label: bool,
    sample_rate_hz: float,
    window_samples: int | None = None,
    dropout: float | None = None,
) -> keras.Model:
    """Builds resnet1d_wang; `dropout` is the head's last rate p (the first is p/2, as in fastai's head)."""
    del sample_rate_hz  # the benchmark ran at 100 Hz; kernels are in samples, not seconds
    rate = DEFAULT_DROPOUT if dropout is None else dropout
    inputs = signal_input(num_leads, window_samples)
    x = _conv(inputs, FILTERS, STEM_KERNEL)
    x = keras.layers.BatchNormalization(**PYTORCH_BN)(x)
    x = keras.layers.ReLU()(x)
    for stride in BLOCK_STRIDES:
        x = _basic_block(x, FILTERS, stride)
    return keras.Model(inputs, benchmark_head(x, num_classes, multi_label, rate), name="resnet1d")

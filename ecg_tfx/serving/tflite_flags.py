"""The --tflite_variants flag, defined once and shared by `export` and `train` (which can export at its end)."""

from __future__ import annotations

from absl import flags

from ecg_tfx.serving.tflite import VARIANTS

TFLITE_VARIANTS = flags.DEFINE_list(
    "tflite_variants", list(VARIANTS), "Which TFLite variants --tflite writes. int16x8 (int16 activations) has no "
    "XNNPACK kernels: on a CPU it runs on LiteRT's reference kernels (hundreds of ms per window), so leave it out "
    "unless the target has a 16x8 accelerator.")
flags.register_validator("tflite_variants", lambda v: set(v) <= set(VARIANTS) and bool(v),
                         f"--tflite_variants takes some of {','.join(VARIANTS)}")

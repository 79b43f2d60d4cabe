"""Model registry: every builder maps a preprocessed float32 signal [batch, time, leads] to probabilities.

Builders share one signature, `(num_leads, num_classes, multi_label, sample_rate_hz, window_samples=None,
dropout=None)`; `window_samples=None` leaves the time axis open (training on crops), and `dropout=None` means
the architecture's documented default (cnn 0.3, resnet1d and inception1d 0.5 as in the PTB-XL benchmark,
features 0.3).
The output layer is softmax (single-label) or sigmoid (multi-label) and always computes in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from ecg_tfx.models.cnn import build_cnn
from ecg_tfx.models.features import build_features_model
from ecg_tfx.models.inception1d import build_inception1d
from ecg_tfx.models.resnet1d import build_resnet1d

MODELS: dict[str, Callable[..., keras.Model]] = {
    "cnn": build_cnn,
    "resnet1d": build_resnet1d,
    "inception1d": build_inception1d,
    "features": build_features_model,
}


def build_model(
    name: str,
    num_leads: int,
    num_classes: int,
    multi_label: bool,
    sample_rate_hz: float,
    window_samples: int | None = None,
    dropout: float | None = None,
) -> keras.Model:
    """Builds the registered model `name`; raises ValueError for an unknown name or bad sizes."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    if num_leads < 1 or num_classes < 1 or sample_rate_hz <= 0:
        raise ValueError(
            f"need num_leads, num_classes >= 1 and sample_rate_hz > 0, got {num_leads}, {num_classes}, {sample_rate_hz}"
        )
    return MODELS[name](num_leads, num_classes, multi_label, sample_rate_hz, window_samples, dropout)

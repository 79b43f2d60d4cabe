"""The compute dtype of an exported model, whatever precision policy the run trained under.

A run trained under mixed_bfloat16 (what `--precision=auto` picks on CPUs with native bf16) or mixed_float16
(tensor-core GPUs) saves layers that compute in bf16/fp16 on float32 variables. TFLite has no bf16 kernels and
not every serving CPU has bf16 or fp16 units, so the export rebuilds the same architecture with every layer's
dtype policy rewritten and copies the (float32) weights: float32 by default, or bfloat16/float16 compute for
serving hardware that gains from it. Layers that compute in float32 inside a mixed model were pinned there by the
architecture (the probability output, the features extractor) and stay float32.
"""

from __future__ import annotations

import keras

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def _computes_reduced(layer: keras.layers.Layer) -> bool:
    return layer.dtype_policy.compute_dtype != "float32"


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of `model`, nested models' layers included."""
    return [inner for layer in model.layers
            for inner in (_layers(layer) if isinstance(layer, keras.Model) else [layer])]


def with_compute_dtype(model: keras.Model, compute_dtype: str) -> keras.Model:
    """A copy of `model` (same architecture and weights) whose layers compute in `compute_dtype`.

    float32 rewrites every layer to the float32 policy. bfloat16/float16 give the layers that compute in reduced
    precision in `model` the policy `mixed_<compute_dtype>` (float32 variables); a model trained under float32
    records no such layers (nor which ones the architecture pins to float32) and raises ValueError.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    if compute_dtype != "float32" and not any(map(_computes_reduced, _layers(model))):
        raise ValueError(f"{model.name} was trained under float32: it does not tell which layers may compute in "
                         f"{compute_dtype}; export it in float32, or train under mixed_bfloat16 or mixed_float16")

    def clone(operation: keras.Operation) -> keras.Operation:
        if not isinstance(operation, keras.layers.Layer):
            return operation  # a stateless op of the functional graph (slicing, keras.ops calls)
        config = operation.get_config()
        reduced = compute_dtype != "float32" and _computes_reduced(operation)
        config["dtype"] = f"mixed_{compute_dtype}" if reduced else "float32"
        return operation.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy

"""Warm start (`--init_from=<run_dir>`): a new run begins from a finished run's weights.

The finished run's `model.keras` is read: the model its metrics describe and its export serves (the best epoch's
weights, restored at the end of its training). The new run must use the same architecture and input
(`COMPATIBLE_FIELDS` of the two ModelSpecs; a difference is a ValueError naming the field and both values). With
the same classes (the same names in the same order, multi-label or not) every weight is copied; otherwise the body
is copied and the head (`models.parts`) keeps its fresh initialization, sized for the new classes.

Layers are paired in order within each part: both models come from the same builder with the same number of leads,
so their layers correspond one to one (checked: the same layer class and weight shapes), whatever names Keras gave
them in either process.
"""

from __future__ import annotations

import keras

from ecg_tfx.core import storage
from ecg_tfx.core.model_spec import FILENAME as SPEC_FILE
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.core.run_folder import MODEL, RunFolder
from ecg_tfx.models.parts import body_layers, head_layers

COMPATIBLE_FIELDS = ("model", "leads", "sample_rate_hz", "input_samples")


def check_compatible(pretrained: ModelSpec, spec: ModelSpec, init_dir: str) -> None:
    """ValueError naming the first field in COMPATIBLE_FIELDS where `spec` differs from the pretrained run's."""
    for field in COMPATIBLE_FIELDS:
        if getattr(pretrained, field) != getattr(spec, field):
            raise ValueError(f"--init_from={init_dir} cannot start this run: its {field} is "
                             f"{getattr(pretrained, field)!r} but this run's is {getattr(spec, field)!r} (a warm "
                             f"start needs the same {', '.join(COMPATIBLE_FIELDS)})")


def _with_weights(layers: list[keras.layers.Layer]) -> list[keras.layers.Layer]:
    return [layer for layer in layers if layer.weights]


def _copy(targets: list[keras.layers.Layer], sources: list[keras.layers.Layer]) -> None:
    if len(targets) != len(sources):
        raise ValueError(f"the pretrained model has {len(sources)} layers with weights here, this one {len(targets)}")
    for target, source in zip(targets, sources):
        shapes = [tuple(w.shape) for w in target.weights], [tuple(w.shape) for w in source.weights]
        if type(target) is not type(source) or shapes[0] != shapes[1]:
            raise ValueError(f"layer {target.name} ({type(target).__name__} {shapes[0]}) does not match the pretrained "
                             f"{source.name} ({type(source).__name__} {shapes[1]})")
        target.set_weights(source.get_weights())


def warm_start(model: keras.Model, spec: ModelSpec, init_dir: str) -> dict:
    """Copies the run `init_dir`'s weights into `model` (built for `spec`); returns what was done, for run_info.json.

    The record names the run, the file read and its sha256, the sha256 of the run's flags.txt (its configuration)
    and model_spec.json, its classes, whether the head was reused, and the layers reused and new (this model's
    names, layers with weights only).
    """
    storage.enable_filesystem(init_dir)
    run = RunFolder(init_dir)
    for path in (storage.join(init_dir, SPEC_FILE), run.model):
        if not storage.exists(path):
            raise FileNotFoundError(f"--init_from={init_dir} is not a finished run: {path} is missing")
    pretrained_spec = ModelSpec.load(init_dir)
    check_compatible(pretrained_spec, spec, init_dir)
    pretrained = keras.saving.load_model(run.model, compile=False)
    same_classes = (pretrained_spec.labels, pretrained_spec.multi_label) == (spec.labels, spec.multi_label)
    reused = _with_weights(body_layers(model))
    _copy(reused, _with_weights(body_layers(pretrained)))
    if same_classes:
        _copy(_with_weights(head_layers(model)), _with_weights(head_layers(pretrained)))
        reused += _with_weights(head_layers(model))
    return {
        "run_dir": init_dir,
        "model_file": MODEL,
        "model_sha256": storage.sha256(run.model),
        "flags_sha256": storage.sha256(run.flags) if storage.exists(run.flags) else None,
        "model_spec_sha256": storage.sha256(storage.join(init_dir, SPEC_FILE)),
        "labels": list(pretrained_spec.labels),
        "multi_label": pretrained_spec.multi_label,
        "head": "reused (same classes)" if same_classes else "new (other classes)",
        "reused_layers": [layer.name for layer in reused],
        "new_layers": [layer.name for layer in _with_weights(model.layers) if layer not in reused],
    }

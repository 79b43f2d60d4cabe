"""Seed ensembles: several training runs of one task served and evaluated as one model.

`load_runs` reads the runs' Keras models and their one shared ModelSpec (runs that differ in any spec field,
e.g. classes, leads, rate, window or preprocessing, are refused, naming the field); `average` turns the members
into one Keras model whose output is the mean of their probabilities. Preprocessing is not part of a Keras model,
so whatever wraps it (the SavedModel, the TFLite window model, evaluation) preprocesses once for all members.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from ecg_tfx.core.model_spec import ModelSpec, common_spec
from ecg_tfx.core.run_folder import RunFolder


def load_run(run_dir: str, checkpoint: str = "final") -> tuple[keras.Model, ModelSpec]:
    """A run's Keras model of `checkpoint` ('final' or 'best', `run_folder.CHECKPOINTS`) and its ModelSpec,
    checked against each other."""
    spec = ModelSpec.load(run_dir)
    model = keras.saving.load_model(RunFolder(run_dir).checkpoint(checkpoint), compile=False)
    if model.output_shape[-1] != len(spec.labels):
        raise ValueError(f"{run_dir}: the model has {model.output_shape[-1]} outputs but the spec "
                         f"{len(spec.labels)} labels")
    if model.input_shape[-1] != len(spec.leads):
        raise ValueError(f"{run_dir}: the model takes {model.input_shape[-1]} leads, the spec names {len(spec.leads)}")
    return model, spec


def load_runs(run_dirs: Sequence[str], checkpoint: str = "final") -> tuple[list[keras.Model], ModelSpec]:
    """The Keras models of one or more runs (in the given order) and their common ModelSpec."""
    if not run_dirs:
        raise ValueError("no run folder given")
    if len(set(run_dirs)) != len(run_dirs):
        raise ValueError(f"a run folder is given twice: {list(run_dirs)}")
    specs = {run_dir: ModelSpec.load(run_dir) for run_dir in run_dirs}
    spec = common_spec(specs)  # before loading any model: a mismatch is reported at once
    return [load_run(run_dir, checkpoint)[0] for run_dir in run_dirs], spec


def average(members: Sequence[keras.Model]) -> keras.Model:
    """One Keras model: the mean of the members' probabilities [batch, classes]; a single member is returned as is.

    Members keep their weights (no copy); each is wrapped under the name `member_<i>`, as runs of one architecture
    share a model name.
    """
    if len(members) == 1:
        return members[0]
    signal = keras.Input(members[0].input_shape[1:], name="ecg")
    outputs = [keras.Model(member.inputs, member.output, name=f"member_{index}")(signal)
               for index, member in enumerate(members)]
    return keras.Model(signal, keras.layers.Average(dtype="float32", name="mean_probabilities")(outputs),
                       name=f"ensemble_of_{len(members)}")

"""Keras callbacks the trainer needs beyond Keras's own."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from ecg_tfx.core import storage

# What each stateful callback must carry over a kill to continue as if never stopped.
_CALLBACK_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    keras.callbacks.ModelCheckpoint: ("best",),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}
_METADATA = "training_metadata.json"


class CSVLogger(keras.callbacks.CSVLogger):
    """Keras's CSVLogger, able to close a tf.io.gfile file (s3://, gs://): Keras asks it for `.closed`.

    A run resumed at `first_epoch` keeps the rows of the epochs before it only: an epoch logged just before a
    kill, but not yet backed up, is run again and logged once, and a row the kill cut short is dropped.
    """

    def __init__(self, filename: str, first_epoch: int = 0):
        super().__init__(filename, append=first_epoch > 0)
        self.first_epoch = first_epoch

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.first_epoch and storage.exists(self.filename):
            rows = list(csv.reader(io.StringIO(storage.read_text(self.filename), newline="")))
            kept = rows[:1] + [row for row in rows[1:] if len(row) == len(rows[0]) and row[0].isdigit()
                               and int(row[0]) < self.first_epoch]
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(kept)
            storage.write_bytes(self.filename, text.getvalue().encode())
        super().on_train_begin(logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.csv_file is not None:
            self.csv_file.close()
            self.csv_file = None
        self.writer = None


class TrainingDiverged(RuntimeError):
    """The model's weights stopped being finite: the run cannot produce a usable model."""


class FiniteWeights(keras.callbacks.Callback):
    """Stops the run after the first training step that leaves a weight (BatchNorm statistics included) not finite.

    Keras's TerminateOnNaN watches the loss, which stays finite while the weights are NaN: in graph mode the head's
    fused Dense + ReLU maps NaN to 0, so the output layer sees zeros and answers a constant. A diverged run would
    otherwise train on and export a model that answers NaN. Checked after every step, so the error names the step
    (one reduction over all weights: 10 ms against a 0.66 s bf16 step of 12-lead resnet1d at batch 64, measured at
    load 7.5). Runs first among the callbacks, so no checkpoint or backup of that epoch is written.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0
        self._all_finite = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        weights = self.model.weights
        self._all_finite = tf.function(lambda: tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(tf.cast(w.value, tf.float32))) for w in weights]))

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if bool(self._all_finite()):
            return
        name = next(w.path for w in self.model.weights
                    if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(w.value, tf.float32)))))
        raise TrainingDiverged(
            f"training diverged in epoch {self._epoch + 1}, step {batch + 1}: {name} is not finite; try a lower "
            "--learning_rate or --precision=float32 (no model was kept from this epoch)")


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint(save_best_only) of a .keras `filepath` that ignores the first epochs, like
    EarlyStopping(start_from_epoch), and publishes each best model whole: Keras writes it beside `filepath`, then
    it is renamed onto it (a kill mid-write leaves the previous best, never a partial one that a resumed run keeps).
    """

    def __init__(self, filepath: str, *args, start_from_epoch: int = 0, **kwargs):
        super().__init__(storage.partial_keras_name(filepath), *args, **kwargs)
        self.published_path = filepath
        self.start_from_epoch = start_from_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch < self.start_from_epoch:
            return
        super().on_epoch_end(epoch, logs)
        if storage.exists(self.filepath):  # a new best was saved
            storage.publish(self.filepath, self.published_path)


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that also backs up what a resumed run needs to continue exactly as an uninterrupted one.

    Beyond the model and optimizer weights: the state of `stateful` callbacks (EarlyStopping's best score,
    patience count and best weights, ModelCheckpoint's best score, ReduceLROnPlateau's counters) and the
    models' random seed states (dropout). Each epoch's backup is published atomically: its files get new names,
    then `training_metadata.json` (written by rename) points at them, then the older ones are removed; a kill
    at any moment leaves the previous complete backup or the new one. Place it after the callbacks it saves,
    so it backs up their state after this epoch's update and restores it after their `on_train_begin` reset.

    With `keep_finished`, when training ends (every epoch run, or stopped early) the finished state is backed up
    too, with no epoch left, and kept: the trainer removes it once the run folder is complete, so a run killed
    while it evaluates or exports resumes to the same model without training again. Multi-worker training does not
    keep it (as Keras, it removes the backup when training ends): the other workers return after training, and a
    restarted chief with no epoch left would wait for them forever; all start again from epoch 0 instead.

    Without `writes` it only restores: multi-worker workers other than the chief resume from the chief's backup,
    so every replica continues from one epoch with one set of weights, wherever a kill fell between backups.
    `settings` (the run's training settings) are recorded with each backup, so a resume under other settings is
    refused (`resume_epoch`) instead of ending as neither run would.
    """

    def __init__(self, backup_dir: str, stateful: Sequence[keras.callbacks.Callback] = (), keep_finished: bool = True,
                 writes: bool = True, settings: dict | None = None):
        super().__init__(backup_dir, save_freq="epoch", double_checkpoint=False)
        self.stateful = list(stateful)
        self.keep_finished = keep_finished
        self.writes = writes
        self.settings = settings or {}

    @staticmethod
    def resume_epoch(backup_dir: str, settings: dict) -> int:
        """The epoch a run backed up in `backup_dir` resumes at (0: no backup, a fresh run); ValueError, naming what
        changed, when the backup was made under other `settings`."""
        path = storage.join(backup_dir, _METADATA)
        if not storage.exists(path):
            return 0
        metadata = storage.read_json(path)
        made_with = metadata["settings"]
        changed = {name: (made_with.get(name), settings.get(name)) for name in sorted(set(made_with) | set(settings))
                   if made_with.get(name) != settings.get(name)}
        if changed:
            listed = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
            raise ValueError(f"{backup_dir} holds the backup of a run made with other training flags ({listed}): "
                             "resume it with the flags it was started with, or train into a new --run_dir")
        return int(metadata["epoch"])

    def _save_model(self) -> None:
        if not self.writes:
            return
        epoch = self._current_epoch
        storage.makedirs(self.backup_dir)
        metadata = {"epoch": epoch, "settings": self.settings, "weights": f"epoch{epoch}.weights.h5", "callbacks": [],
                    "seed_states": [v.numpy().tolist() for v in _seed_states(self.model)]}
        self.model.save_weights(storage.join(self.backup_dir, metadata["weights"]), overwrite=True)
        for callback in self.stateful:
            state = {name: _plain(getattr(callback, name)) for name in _state_names(callback)}
            if getattr(callback, "best_weights", None) is not None:
                state["best_weights"] = f"best_weights_epoch{callback.best_epoch}.npz"
                path = storage.join(self.backup_dir, state["best_weights"])
                if not storage.exists(path):
                    buffer = io.BytesIO()
                    np.savez(buffer, *callback.best_weights)
                    storage.write_bytes(path, buffer.getvalue())
            metadata["callbacks"].append(state)
        storage.write_json(storage.join(self.backup_dir, _METADATA), metadata)
        referenced = {metadata["weights"], _METADATA} | {s["best_weights"] for s in metadata["callbacks"]
                                                         if "best_weights" in s}
        for name in storage.listdir(self.backup_dir):
            if name not in referenced:
                storage.remove(storage.join(self.backup_dir, name))

    def on_train_end(self, logs: dict | None = None) -> None:
        if not self.writes:
            return
        if not self.keep_finished:
            super().on_train_end(logs)  # removes the backup
            return
        self._current_epoch = self.params["epochs"]
        self._save_model()

    def _load_model(self) -> None:
        path = storage.join(self.backup_dir, _METADATA)
        if not storage.exists(path):
            return
        metadata = storage.read_json(path)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(storage.join(self.backup_dir, metadata["weights"]))
        for variable, value in zip(_seed_states(self.model), metadata["seed_states"]):
            variable.assign(np.array(value, variable.dtype))
        for callback, state in zip(self.stateful, metadata["callbacks"]):
            for name in _state_names(callback):
                setattr(callback, name, state[name])
            if "best_weights" in state:
                arrays = np.load(io.BytesIO(storage.read_bytes(storage.join(self.backup_dir, state["best_weights"]))))
                callback.best_weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        self.model._initial_epoch = self._current_epoch = metadata["epoch"]


def _state_names(callback: keras.callbacks.Callback) -> tuple[str, ...]:
    for kind, names in _CALLBACK_STATE.items():
        if isinstance(callback, kind):
            return names
    raise TypeError(f"{type(callback).__name__} has no known state to back up")


def _seed_states(model: keras.Model) -> list:
    """The model's random seed states (dropout's): variables that are not weights, so save_weights skips them."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _plain(value: object) -> object:
    """A callback's number as JSON can hold it (numpy scalars become Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value

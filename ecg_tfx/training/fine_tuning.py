"""Fine-tuning a warm-started body: frozen for the first epochs (`FreezeBody`), then a lower learning rate
(`body_scaled_optimizer`). The body and head are `models.parts`'."""

from __future__ import annotations

from collections.abc import Iterable

import keras
from keras import ops

from ecg_tfx.models.parts import body_layers


class FreezeBody(keras.callbacks.Callback):
    """Freezes the body during epochs [0, `epochs`), then trains it: the state is a function of the epoch alone,
    so a run resumed at any epoch does what an uninterrupted one does.

    A frozen body neither updates its weights nor its BatchNorm statistics (Keras runs frozen BatchNorm in
    inference mode). Keras traces the trainable variables into its train function, so each change of state
    rebuilds it (under any tf.distribute strategy and precision policy, as fit itself does). The optimizer must
    already be built with every variable (the trainer builds it before fit): one built on the head alone would
    refuse the body's variables once they train. The body is trainable again when training ends.
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def _set_body_trainable(self, trainable: bool) -> None:
        layers = body_layers(self.model)
        if any(layer.trainable != trainable for layer in layers):
            for layer in layers:
                layer.trainable = trainable
            self.model.make_train_function(force=True)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._set_body_trainable(epoch >= self.epochs)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._set_body_trainable(True)


class _BodyScaled:
    """Mixin for a Keras optimizer: the variables named in `body_paths` learn at `body_lr_factor` times its
    learning rate (schedule included), decoupled weight decay too (AdamW decays by lr x weight_decay).

    The learning rate is scaled in `update_step`, not the gradient: Adam's update does not change when its
    gradients are scaled. The body's weight decay is applied there too, before the update as Keras decays the
    others, with no state changed while a step is traced (MirroredStrategy traces replicas in threads).
    Variables are told apart by their index in the optimizer (fixed when it is built). Plain Keras cannot rebuild
    it, so a run's .keras files are written without it (`portable`).
    """

    def __init__(self, *args, body_lr_factor: float = 1.0, body_paths: Iterable[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.body_lr_factor = body_lr_factor
        self.body_paths = list(body_paths)
        self._body_indices: set[int] = set()

    def build(self, variables: list) -> None:
        super().build(variables)
        paths = set(self.body_paths)
        self._body_indices = {index for index, variable in enumerate(variables) if variable.path in paths}

    def _in_body(self, variable) -> bool:
        return self._get_variable_index(variable) in self._body_indices

    def _apply_weight_decay(self, variables: list) -> None:
        super()._apply_weight_decay([variable for variable in variables if not self._in_body(variable)])

    def update_step(self, gradient, variable, learning_rate) -> None:
        if self._in_body(variable):
            learning_rate = learning_rate * self.body_lr_factor
            if self.weight_decay and self._use_weight_decay(variable):  # first, as Keras decays the others
                decay = ops.cast(self.weight_decay, variable.dtype) * ops.cast(learning_rate, variable.dtype)
                self.assign_sub(variable, variable * decay)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "body_lr_factor": self.body_lr_factor, "body_paths": self.body_paths}


@keras.saving.register_keras_serializable("ecg_tfx")
class BodyScaledAdam(_BodyScaled, keras.optimizers.Adam):
    """Adam with the body's learning rate scaled (`_BodyScaled`)."""


@keras.saving.register_keras_serializable("ecg_tfx")
class BodyScaledAdamW(_BodyScaled, keras.optimizers.AdamW):
    """AdamW with the body's learning rate and weight decay scaled (`_BodyScaled`)."""


def body_variable_paths(model: keras.Model) -> list[str]:
    """The paths of the body's trainable variables (what `_BodyScaled` scales)."""
    return [variable.path for layer in body_layers(model) for variable in layer.trainable_weights]


def portable(model: keras.Model) -> keras.Model:
    """What a run's .keras file holds, so that plain Keras loads it, compiled or not: `model` itself (with its
    Keras optimizer), or, when its optimizer is body-scaled (a class only ecg_tfx defines), the same layers as an
    uncompiled model. run_info.json records the fine-tuning settings; evaluation, export and warm starts load
    weights alone."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under a LossScaleOptimizer (float16)
    if not isinstance(optimizer, _BodyScaled):
        return model
    return keras.Model(model.input, model.output, name=model.name)  # the same layers: no copy of the weights

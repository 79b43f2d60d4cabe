"""The trainer: `train(TrainConfig)` fits a model on converted TFRecords, evaluates it and exports it.

It reads no flags (the `train` command turns flags into a TrainConfig), so tests and benchmarks call it
directly. Under multi-worker training only the chief writes the run folder, its backup included; the other
workers resume from that backup, keep their logs and checkpoints in `<run_dir>/.workers/<i>/` and remove it at the
end.
"""

from __future__ import annotations

import platform
import sys
import time

import keras
import tensorflow as tf
from absl import logging

from ecg_tfx.core import storage
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.data import input_pipeline
from ecg_tfx.evaluation import plots
from ecg_tfx.evaluation.evaluate import BATCH_SIZE, evaluate, fit_decision, predict
from ecg_tfx.models import build_model
from ecg_tfx.serving.exporter import export_run
from ecg_tfx.training import distribute
from ecg_tfx.training.callbacks import BestCheckpoint, CSVLogger, FiniteWeights, ResumableBackup
from ecg_tfx.training.config import TrainConfig
from ecg_tfx.training.fine_tuning import BodyScaledAdam, BodyScaledAdamW, FreezeBody, body_variable_paths, portable
from ecg_tfx.training.warm_start import warm_start


def callbacks(config: TrainConfig, work_dir: str, backup_dir: str, first_epoch: int = 0, keep_finished: bool = True,
              writes_backup: bool = True) -> list[keras.callbacks.Callback]:
    """The body's freezing (--freeze_epochs), the divergence check, LR schedule, early stopping, best checkpoint,
    TensorBoard, CSV log, and last the backup.

    `work_dir` is the run folder on the chief; other multi-worker workers get their own, removed at the end.
    A killed run resumes from `backup_dir` (at `first_epoch`) with the same best score, patience count and best weights;
    `keep_finished`: also after training, until the run folder is complete; without `writes_backup` it only
    restores from `backup_dir` (`ResumableBackup`).
    """
    mode = "min" if "loss" in config.monitor else "max"
    warmup = min(config.warmup_epochs, config.epochs - 1)
    work = RunFolder(work_dir)
    stateful = [keras.callbacks.ReduceLROnPlateau(config.monitor, mode=mode, factor=0.5, patience=config.lr_patience,
                                                  min_lr=1e-6)] if config.lr_schedule == "plateau" else []
    stateful += [
        keras.callbacks.EarlyStopping(config.monitor, mode=mode, patience=config.patience,
                                      restore_best_weights=True, start_from_epoch=warmup),
        BestCheckpoint(work.best, monitor=config.monitor, mode=mode, save_best_only=True, start_from_epoch=warmup),
    ]
    return [
        *([FreezeBody(config.freeze_epochs)] if config.freeze_epochs else []),
        FiniteWeights(),
        *stateful,
        keras.callbacks.TensorBoard(work.logs),
        CSVLogger(work.history, first_epoch=first_epoch),
        ResumableBackup(backup_dir, stateful, keep_finished, writes_backup, config.training_settings()),
    ]


def optimizer(config: TrainConfig, train_steps: int, body_paths: list[str] = ()) -> keras.optimizers.Optimizer:
    """Adam, or AdamW with weight decay; the learning rate follows the schedule over `train_steps` in all. With
    --body_lr_factor, the variables in `body_paths` learn at that fraction of it (`fine_tuning._BodyScaled`)."""
    rate = config.learning_rate
    if config.lr_schedule == "one_cycle":
        warmup = int(0.3 * train_steps)
        rate = keras.optimizers.schedules.CosineDecay(rate / 25, max(1, train_steps - warmup), alpha=1e-4,
                                                      warmup_target=rate, warmup_steps=warmup)
    if config.body_lr_factor != 1:
        scaled = dict(body_lr_factor=config.body_lr_factor, body_paths=body_paths)
        if config.weight_decay:
            return BodyScaledAdamW(rate, weight_decay=config.weight_decay, **scaled)
        return BodyScaledAdam(rate, **scaled)
    if config.weight_decay:
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(rate)


def compile_model(config: TrainConfig, spec: ModelSpec, train_steps: int) -> keras.Model:
    """The spec's architecture, compiled with the config's optimizer, the loss and accuracy/AUC metrics.

    With --freeze_epochs the optimizer is built here on every trainable variable, before `FreezeBody` hides the
    body's (fit would build it on the head's alone, and refuse the body's later)."""
    model = build_model(spec.model, len(spec.leads), len(spec.labels), spec.multi_label, spec.sample_rate_hz,
                        spec.input_samples, config.dropout)
    if spec.multi_label:
        loss, accuracy = "binary_crossentropy", keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss, accuracy = "categorical_crossentropy", keras.metrics.CategoricalAccuracy(name="accuracy")
    auc = keras.metrics.AUC(name="auc", multi_label=spec.multi_label,
                            num_labels=len(spec.labels) if spec.multi_label else None)
    model.compile(optimizer(config, train_steps, body_variable_paths(model)), loss, metrics=[accuracy, auc])
    if config.freeze_epochs:
        model.optimizer.build(model.trainable_variables)
    return model


def datasets(config: TrainConfig, manifest: Manifest, spec: ModelSpec, strategy: tf.distribute.Strategy,
             first_epoch: int = 0) -> tuple[tf.distribute.DistributedDataset, tf.data.Dataset]:
    """Training and validation data, training from `first_epoch` on (where a resumed run continues).

    Training data is made per input pipeline (`distribute_datasets_from_function`): each worker reads its own
    disjoint part of the examples (`input_pipeline.training_examples`), all of them together every epoch.
    Validation is deterministic and auto-sharded: by file when each worker gets one, else by data.
    """
    weights = manifest.class_weights(spec.labels) if config.class_weights else None
    common = dict(data_dir=config.data_dir, manifest=manifest, spec=spec, batch_size=config.batch_size, repeat=True)

    def train(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return input_pipeline.make_dataset(
            split="train", training=True, augmentation=config.augment_config(spec), cache=config.cache,
            seed=config.seed, weights=weights, drop_remainder=strategy.num_replicas_in_sync > 1,
            first_epoch=first_epoch, input_context=context, **common)

    validation = input_pipeline.make_dataset(split="validation", training=False, cache=config.cache and "memory",
                                             **common)
    enough_files = len(manifest.split("validation").shards) >= distribute.num_workers(strategy)
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.FILE if enough_files else policy.DATA
    return strategy.distribute_datasets_from_function(train), validation.with_options(options)


def write_run_files(run: RunFolder, spec: ModelSpec, info: dict, flags_text: str) -> None:
    spec.save(run.path)
    storage.write_json(run.labels, {"labels": list(spec.labels), "multi_label": spec.multi_label})
    storage.write_bytes(run.flags, flags_text.encode())
    storage.write_json(run.run_info, info)


def train(config: TrainConfig, flags_text: str = "") -> dict:
    """Trains, evaluates on validation and test, exports; returns the run info (also in run_info.json).

    `flags_text` is written to flags.txt: the command line that reproduces the run (the `train` command's flags).
    """
    if config.virtual_cpus:
        distribute.split_cpu(config.virtual_cpus)
    storage.enable_filesystem(config.run_dir)
    manifest = Manifest.load(config.data_dir)
    precision, reason = distribute.set_precision(config.precision)
    strategy = distribute.make_strategy(config.strategy)
    chief = distribute.is_chief(strategy)
    run = RunFolder(config.run_dir)
    work_dir = run.path if chief else storage.join(run.workers, str(strategy.cluster_resolver.task_id))
    storage.makedirs(work_dir)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    spec = config.model_spec(manifest)
    info = {"precision": precision, "precision_reason": reason, "strategy": type(strategy).__name__,
            "replicas": strategy.num_replicas_in_sync, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "data_dir": config.data_dir, "model": spec.model}
    logging.info("training %s: %s on %d replica(s), precision %s (%s)", spec.model, info["strategy"],
                 info["replicas"], precision, reason)
    first_epoch = ResumableBackup.resume_epoch(run.backup, config.training_settings())  # the chief's, for every worker
    train_data, validation_data = datasets(config, manifest, spec, strategy, first_epoch)
    steps = {split: input_pipeline.batches_per_epoch(manifest, split, spec, config.batch_size, split == "train",
                                                     split == "train" and strategy.num_replicas_in_sync > 1)
             for split in ("train", "validation")}
    with strategy.scope():
        model = compile_model(config, spec, steps["train"] * config.epochs)
    info["parameters"] = model.count_params()
    if config.init_from:  # before a resumed run's backup replaces the weights, as in the uninterrupted run
        info["init_from"] = {**warm_start(model, spec, config.init_from), "freeze_epochs": config.freeze_epochs,
                             "body_lr_factor": config.body_lr_factor}
    if chief:
        write_run_files(run, spec, info, flags_text)
    started = time.time()
    run_callbacks = callbacks(config, work_dir, run.backup, first_epoch, distribute.num_workers(strategy) == 1, chief)
    model.fit(train_data, validation_data=validation_data, epochs=config.epochs, shuffle=False,
              steps_per_epoch=steps["train"], validation_steps=steps["validation"], callbacks=run_callbacks,
              verbose=1 if sys.stdout.isatty() else 2)
    info["train_seconds"] = round(time.time() - started, 1)
    stop = next(c for c in run_callbacks if isinstance(c, keras.callbacks.EarlyStopping))  # restored on a resume
    info["epochs_run"] = stop.stopped_epoch + 1 if stop.stopped_epoch else config.epochs
    if not chief:  # leaves nothing in the run folder
        storage.remove(work_dir)
        try:  # another worker may have removed it first, or an object store has no folder left to list
            if not storage.listdir(run.workers):
                storage.remove(run.workers)
        except FileNotFoundError:
            pass
        return info
    save_models(model, run)
    info = finish(config, run, model, spec, manifest, info)
    if storage.exists(run.backup):  # the run folder is complete: nothing left to resume
        storage.remove(run.backup)
    return info


def save_keras(model: keras.Model, path: str) -> None:
    """`model.save(path)`, whole or not at all: written beside it, then renamed into place."""
    partial = storage.partial_keras_name(path)
    model.save(partial)
    storage.publish(partial, path)


def save_models(model: keras.Model, run: RunFolder) -> None:
    """model.keras (the best weights: EarlyStopping restored them) and best.keras, both as plain Keras loads them
    (`fine_tuning.portable`): BestCheckpoint's best.keras is rewritten when it carries a body-scaled optimizer."""
    saved = portable(model)
    save_keras(saved, run.model)
    if not storage.exists(run.best):
        save_keras(saved, run.best)
    elif saved is not model:
        save_keras(keras.saving.load_model(run.best, compile=False), run.best)


def finish(config: TrainConfig, run: RunFolder, model: keras.Model, spec: ModelSpec, manifest: Manifest,
           info: dict) -> dict:
    """Plots, the decision fitted on validation, evaluation on validation and test, and the export: everything
    after fit, chief only."""
    plots.save_training_history(run.history, run.history_plot)
    validation = predict(model, spec, config.data_dir, manifest, "validation", BATCH_SIZE)  # used twice
    decision = fit_decision(model, spec, config.data_dir, manifest, predictions=validation)
    decision.save(run.decision)
    for split in ("validation", "test"):
        info[f"{split}_metrics"] = evaluate(model, spec, config.data_dir, manifest, split, run.evaluation_dir(split),
                                            decision=decision,
                                            predictions=validation if split == "validation" else None)
    if config.export:
        info["export"] = export_run(run.path, config.export_dir or run.export, config.model_name,
                                    tflite=config.tflite, data_dir=config.data_dir,
                                    tflite_variants=config.tflite_variants)
    storage.write_json(run.run_info, info)
    return info

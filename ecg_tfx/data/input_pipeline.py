"""The tf.data input pipeline: sharded TFRecords in, (signal, target[, weight]) batches out.

Order, following the tf.data performance guide: shard files listed from the manifest (any filesystem),
interleaved with parallel but deterministic reads (training: files in a seeded order); batched, then parsed
and preprocessed vectorized; cached (memory or file) before any randomness; training only: numbered, split
between workers, shuffled and augmented afresh in each epoch; batched; prefetched. Preprocessing is
`preprocessing.preprocess`, the same function the exported model runs, so training and serving cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from ecg_tfx.core import schema
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec, frame
from ecg_tfx.dsp.augment import AugmentConfig, augment, example_seed
from ecg_tfx.dsp.preprocessing import preprocess

_PARSE_BATCH = 64


def targets(label_ids: tf.RaggedTensor, num_classes: int) -> tf.Tensor:
    """Ragged label ids -> one-hot (single-label) or multi-hot (multi-label) float32 [batch, classes]."""
    return tf.reduce_max(tf.one_hot(label_ids, num_classes), axis=1)


def batches_per_epoch(manifest: Manifest, split: str, spec: ModelSpec, batch_size: int, training: bool,
                      drop_remainder: bool = False) -> int:
    """Steps in one pass over a split: windows when training, sliding model inputs otherwise."""
    examples = manifest.split(split).examples
    if not training:
        examples *= 1 + (spec.window_samples - spec.input_samples) // spec.eval_stride_samples
    return max(1, examples // batch_size if drop_remainder else -(-examples // batch_size))


def _read(files: list[str], compression: str, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """The files' examples in a fixed order (files in a `shuffle_seed` order when given; parallel reads)."""
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=False)
    return dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=schema.tfrecord_compression(compression)),
        cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _plain(function: Callable) -> Callable:
    """`function` traced as written: it has no Python control flow on tensors, so AutoGraph's source rewriting
    (seconds per process for the preprocessing and augmentation code) is skipped."""
    return tf.autograph.experimental.do_not_convert(function)


def _decode(spec: ModelSpec):
    def decode(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = schema.parse_examples(serialized, spec.window_samples, len(spec.leads))
        return {
            "signal": preprocess(parsed["signal"], spec.preprocessing),
            "target": targets(parsed["label_ids"], len(spec.labels)),
            "record_id": parsed["record_id"],
            "window_index": parsed["window_index"],
        }
    return decode


def _examples(files: list[str], compression: str, spec: ModelSpec, cache: str, shuffle_seed: int | None = None
              ) -> tf.data.Dataset:
    """Preprocessed examples (dicts) in a fixed order, cached: 'memory', '' (none) or a file path prefix."""
    dataset = _read(files, compression, shuffle_seed)
    dataset = dataset.batch(_PARSE_BATCH).map(_plain(_decode(spec)), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    return dataset.cache("" if cache == "memory" else cache) if cache else dataset


def training_examples(data_dir: str, manifest: Manifest, split: str, spec: ModelSpec, cache: str = "memory",
                      seed: int = 0, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """The examples one input pipeline trains on, once each, in a fixed order (the same on every worker).

    Each dict carries `example`, its index in the split's fixed read order (files shuffled by `seed`). Under an
    input context of N pipelines (workers), pipeline i keeps examples i, i+N, i+2N...: disjoint parts that
    together are the whole split, so no example is read twice or missed in an epoch.
    """
    files = manifest.shard_files(data_dir, split)
    dataset = _examples(files, manifest.compression, spec, cache, shuffle_seed=seed).enumerate()
    dataset = dataset.map(lambda index, example: {**example, "example": index})
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return dataset


def epochs_of(examples: tf.data.Dataset, examples_per_epoch: int, seed: int, buffer_size: int, skip: int = 0,
              repeat: bool = True) -> tf.data.Dataset:
    """`training_examples` epoch after epoch (or one), each dict with its `epoch`, shuffled by (seed, epoch).

    Every iterator yields the same stream (Keras iterates a dataset more than once; a shuffle reshuffling at
    each iteration would hand its training loop an order that depends on what was iterated before). `skip`
    leaves out the stream's first examples: where a resumed run continues.
    """
    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order_seed = tf.random.experimental.stateless_fold_in(tf.constant([1, seed], tf.int64), epoch)
        return _shuffle(examples, buffer_size, order_seed).map(lambda example: {**example, "epoch": epoch})

    first_epoch, skip_in_epoch = divmod(skip, examples_per_epoch)
    epochs = tf.data.Dataset.range(first_epoch, tf.int64.max if repeat else first_epoch + 1)
    return epochs.flat_map(one_epoch).skip(skip_in_epoch)


def _shuffle(dataset: tf.data.Dataset, buffer_size: int, seed: tf.Tensor) -> tf.data.Dataset:
    """`dataset.shuffle(buffer_size, seed, reshuffle_each_iteration=False)` for a seed pair tensor ([2] int64).

    `Dataset.shuffle` takes a tensor seed but, in a traced function under a global seed of 0, fails comparing
    it with 0 in Python; the op itself takes any seed pair.
    """
    specs = tf.nest.flatten(dataset.element_spec)
    variant = tf.raw_ops.ShuffleDatasetV3(
        input_dataset=tf.data.experimental.to_variant(dataset), buffer_size=buffer_size, seed=seed[0],
        seed2=seed[1], seed_generator=tf.raw_ops.DummySeedGenerator(), reshuffle_each_iteration=False,
        output_types=[spec.dtype for spec in specs], output_shapes=[spec.shape for spec in specs])
    return tf.data.experimental.from_variant(variant, dataset.element_spec)


def make_dataset(
    data_dir: str,
    manifest: Manifest,
    split: str,
    spec: ModelSpec,
    batch_size: int,
    training: bool,
    augmentation: AugmentConfig | None = None,
    cache: str = "memory",
    seed: int = 0,
    weights: list[float] | None = None,
    drop_remainder: bool = False,
    with_record_ids: bool = False,
    repeat: bool = False,
    first_epoch: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches of (signal [batch, input_samples, leads], target[, sample weight]).

    Training: examples shuffled, randomly cropped to the model input and augmented, each example's draws seeded
    by (seed, epoch, example). With `repeat` the epochs follow each other endlessly and Keras's epoch
    `first_epoch` (where a resumed run continues) starts where an uninterrupted run's would; else the dataset is
    one epoch. Under an `input_context` (`Strategy.distribute_datasets_from_function`) the pipeline reads its own
    part of the examples (`training_examples`) in per-replica batches.
    Otherwise every window is cut into its sliding model inputs (so validation sees what the test-time average
    sees), unless `with_record_ids`, which yields whole windows with their record ids for evaluation.
    `cache`: 'memory', '' (none) or a file path prefix. `repeat`: endless, for Keras with `batches_per_epoch`
    steps (distributed Keras cannot stop on a dataset of unknown length).
    """
    if training and with_record_ids:
        raise ValueError("with_record_ids is for evaluation data")
    if training:
        dataset = _training_batches(data_dir, manifest, split, spec, batch_size, augmentation, cache, seed,
                                    drop_remainder, repeat, first_epoch, input_context)
    else:
        dataset = _examples(manifest.shard_files(data_dir, split), manifest.compression, spec, cache)
        if with_record_ids:
            return dataset.map(lambda x: {k: x[k] for k in ("signal", "target", "record_id")}).batch(
                batch_size).prefetch(tf.data.AUTOTUNE)
        dataset = dataset.map(_plain(lambda x: _crops(x, spec)), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if weights is not None:
        class_weight = tf.constant(weights, tf.float32)
        dataset = dataset.map(lambda x: (x["signal"], x["target"], _sample_weight(x["target"], class_weight)))
    else:
        dataset = dataset.map(lambda x: (x["signal"], x["target"]))
    return (dataset.repeat() if repeat and not training else dataset).prefetch(tf.data.AUTOTUNE)


def _training_batches(data_dir: str, manifest: Manifest, split: str, spec: ModelSpec, batch_size: int,
                      augmentation: AugmentConfig | None, cache: str, seed: int, drop_remainder: bool, repeat: bool,
                      first_epoch: int, input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
    """Augmented training batches from one endless stream of epochs (no example dropped at an epoch's end).

    A Keras epoch is `batches_per_epoch` steps of it, so a run resumed at `first_epoch` skips the examples
    that many steps took and continues with the very batches an uninterrupted run would have trained on.
    """
    config = augmentation or AugmentConfig(scale_range=None)
    if config.crop_samples is None and spec.input_samples != spec.window_samples:
        raise ValueError("the augmentation must crop training windows to the model's input_samples")
    examples = training_examples(data_dir, manifest, split, spec, cache, seed, input_context)
    steps = batches_per_epoch(manifest, split, spec, batch_size, True, drop_remainder)  # of global batches
    pipelines, pipeline = (input_context.num_input_pipelines, input_context.input_pipeline_id
                           ) if input_context else (1, 0)
    skip = first_epoch * steps * (batch_size // pipelines) if repeat else 0  # this pipeline's part of each step
    buffer_size = 16 * batch_size
    if input_context is not None:  # per-replica batches, handed to this worker's replicas in turn
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    count = len(range(pipeline, manifest.split(split).examples, pipelines))
    stream = epochs_of(examples, count, seed, buffer_size, skip, repeat)

    def augmented(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        draws = example_seed(seed, example["epoch"], example["example"])
        return {**example, "signal": augment(example["signal"][tf.newaxis], config, draws)[0]}

    stream = stream.map(_plain(augmented), num_parallel_calls=tf.data.AUTOTUNE)
    return stream.batch(batch_size, drop_remainder=drop_remainder)


def _crops(window: dict[str, tf.Tensor], spec: ModelSpec) -> dict[str, tf.Tensor]:
    """One window -> its sliding model inputs, each with the window's target."""
    crops = frame(window["signal"][tf.newaxis], spec.input_samples, spec.eval_stride_samples)[0]
    count = tf.shape(crops)[0]
    return {"signal": crops, "target": tf.repeat(window["target"][tf.newaxis], count, axis=0)}


def _sample_weight(target: tf.Tensor, class_weight: tf.Tensor) -> tf.Tensor:
    """The mean weight of an example's positive classes."""
    positives = tf.reduce_sum(target, axis=-1)
    return tf.reduce_sum(target * class_weight, axis=-1) / tf.maximum(positives, 1.0)

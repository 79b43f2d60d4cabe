"""The tf.data input pipeline: sharded TFRecords in, (signal, target[, weight]) batches out.

Order, following the tf.data performance guide: shard files listed from the manifest (any filesystem),
shuffled and interleaved with parallel reads; examples shuffled (training); batched, then parsed and
preprocessed vectorized; cached (memory or file) before any randomness; augmented (training only);
re-batched to the global batch; prefetched. Preprocessing is `preprocessing.preprocess`, the same
function the exported model runs, so training and serving cannot drift.
"""

from __future__ import annotations

import tensorflow as tf

from ecg_tfx.core import schema
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec, frame
from ecg_tfx.dsp.augment import AugmentConfig, augment
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


def _read(files: list[str], compression: str, training: bool, seed: int) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=schema.tfrecord_compression(compression)),
        cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)


def _decode(spec: ModelSpec):
    def decode(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = schema.parse_examples(serialized, spec.window_samples, len(spec.leads))
        return {
            "signal": preprocess(parsed["signal"], spec.preprocessing),
            "target": targets(parsed["label_ids"], len(spec.labels)),
            "record_id": parsed["record_id"],
        }
    return decode


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
) -> tf.data.Dataset:
    """Batches of (signal [batch, input_samples, leads], target[, sample weight]).

    Training: examples shuffled, randomly cropped to the model input and augmented. Otherwise every
    window is cut into its sliding model inputs (so validation sees what the test-time average sees),
    unless `with_record_ids`, which yields whole windows with their record ids for evaluation.
    `cache`: 'memory', '' (none) or a file path prefix. `repeat`: endless, for Keras with
    `batches_per_epoch` steps (distributed Keras cannot stop on a dataset of unknown length).
    """
    if training and with_record_ids:
        raise ValueError("with_record_ids is for evaluation data")
    files = manifest.shard_files(data_dir, split)
    dataset = _read(files, manifest.compression, training, seed)
    if training:
        dataset = dataset.shuffle(4 * batch_size, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(_PARSE_BATCH).map(_decode(spec), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    if cache:
        dataset = dataset.cache("" if cache == "memory" else cache)
    if with_record_ids:
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    if training:
        dataset = dataset.shuffle(16 * batch_size, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        config = augmentation or AugmentConfig(scale_range=None)
        if config.crop_samples is None and spec.input_samples != spec.window_samples:
            raise ValueError("the augmentation must crop training windows to the model's input_samples")
        dataset = dataset.enumerate().map(
            lambda step, batch: {**batch, "signal": augment(batch["signal"], config, tf.stack([seed, step]))},
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda x: _crops(x, spec), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if weights is not None:
        class_weight = tf.constant(weights, tf.float32)
        dataset = dataset.map(lambda x: (x["signal"], x["target"], _sample_weight(x["target"], class_weight)))
    else:
        dataset = dataset.map(lambda x: (x["signal"], x["target"]))
    return (dataset.repeat() if repeat else dataset).prefetch(tf.data.AUTOTUNE)


def _crops(window: dict[str, tf.Tensor], spec: ModelSpec) -> dict[str, tf.Tensor]:
    """One window -> its sliding model inputs, each with the window's target."""
    crops = frame(window["signal"][tf.newaxis], spec.input_samples, spec.eval_stride_samples)[0]
    count = tf.shape(crops)[0]
    return {"signal": crops, "target": tf.repeat(window["target"][tf.newaxis], count, axis=0)}


def _sample_weight(target: tf.Tensor, class_weight: tf.Tensor) -> tf.Tensor:
    """The mean weight of an example's positive classes."""
    positives = tf.reduce_sum(target, axis=-1)
    return tf.reduce_sum(target * class_weight, axis=-1) / tf.maximum(positives, 1.0)

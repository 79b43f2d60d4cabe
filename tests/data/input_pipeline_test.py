"""The tf.data pipeline: shapes per lead count, class weights, and no augmentation outside training."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ecg_tfx.core import schema
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec, frame
from ecg_tfx.data import conversion, input_pipeline
from ecg_tfx.data.conversion import ConversionConfig
from ecg_tfx.dsp.augment import AugmentConfig
from ecg_tfx.dsp.preprocessing import preprocess

TINY = ConversionConfig(synthetic_patients=20, synthetic_records_per_patient=2, synthetic_duration_s=10,
                        sample_rate=100, shard_size_mb=0.2)


def spec_for(manifest: Manifest, input_samples: int = 0) -> ModelSpec:
    return manifest.model_spec("cnn", input_samples / manifest.sample_rate_hz, 50 / manifest.sample_rate_hz)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, Manifest]:
    out = str(tmp_path_factory.mktemp("tiny"))
    return out, conversion.run(TINY, out)


@pytest.mark.parametrize("leads, count", [("ii", 1), ("i,ii,v1", 3), ("standard12", 12)])
def test_shapes_and_dtypes_for_1_3_12_leads(tmp_path, leads, count):
    manifest = conversion.run(ConversionConfig(**{**TINY.__dict__, "leads": leads}), str(tmp_path))
    spec = spec_for(manifest, input_samples=250)
    train = input_pipeline.make_dataset(str(tmp_path), manifest, "train", spec, 8, True,
                                        AugmentConfig(crop_samples=250), weights=[1.0] * 5)
    x, y, w = next(iter(train))
    assert x.shape == (8, 250, count) and x.dtype == tf.float32
    assert y.shape == (8, 5) and y.dtype == tf.float32 and w.shape == (8,)
    validation = input_pipeline.make_dataset(str(tmp_path), manifest, "validation", spec, 8, False)
    x, y = next(iter(validation))
    assert x.shape[1:] == (250, count) and y.shape[1:] == (5,)


def test_sample_weights_follow_the_class(data):
    out, manifest = data
    spec = spec_for(manifest)
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    dataset = input_pipeline.make_dataset(out, manifest, "train", spec, 16, True, weights=weights)
    for _, y, w in dataset:
        np.testing.assert_allclose(w.numpy(), y.numpy() @ np.array(weights))


def test_evaluation_data_is_never_augmented(data):
    out, manifest = data
    spec = spec_for(manifest, input_samples=500)
    files = manifest.shard_files(out, "validation")
    raw = np.stack([schema.decode_example(r.numpy())["signal"] for r in tf.data.TFRecordDataset(files)])
    expected = frame(preprocess(raw, spec.preprocessing), 500, 50).numpy().reshape(-1, 500, raw.shape[-1])
    first = np.concatenate([x.numpy() for x, _ in input_pipeline.make_dataset(out, manifest, "validation", spec,
                                                                              7, False)])
    again = np.concatenate([x.numpy() for x, _ in input_pipeline.make_dataset(out, manifest, "validation", spec,
                                                                              7, False)])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, expected, atol=1e-5)
    assert len(first) == input_pipeline.batches_per_epoch(manifest, "validation", spec, 1, False)


def test_training_data_is_augmented_afresh_each_epoch_and_repeats_in_a_rerun(data):
    """Each example's noise differs between epochs 0 and 1, and a new dataset with the same seed repeats both."""
    out, manifest = data
    spec = spec_for(manifest)
    clean = np.stack([x["signal"].numpy() for x in input_pipeline.training_examples(out, manifest, "train", spec)])
    count = manifest.splits["train"].examples
    assert len(clean) == count

    def noise_per_example(seed: int) -> list[np.ndarray]:
        """Per epoch: each example's added noise, indexed by the example (found as the nearest clean window)."""
        dataset = input_pipeline.make_dataset(out, manifest, "train", spec, count, True,
                                              AugmentConfig(noise_std=0.1, scale_range=None), seed=seed, repeat=True)
        epochs = []
        for x, _ in dataset.take(2):
            x = x.numpy()
            nearest = np.argmin(((x[:, None] - clean[None]) ** 2).sum(axis=(2, 3)), axis=1)
            assert sorted(nearest) == list(range(count))  # every example once in the epoch
            epochs.append((x - clean[nearest])[np.argsort(nearest)])
        return epochs

    epoch0, epoch1 = noise_per_example(seed=3)
    assert abs(epoch0.std() - 0.1) < 0.01
    for example in range(count):
        assert not np.allclose(epoch0[example], epoch1[example], atol=0.05)  # fresh draws for the same example
    for again, first in zip(noise_per_example(seed=3), (epoch0, epoch1)):
        np.testing.assert_allclose(again, first, atol=1e-6)


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_read_disjoint_parts_that_together_are_every_example_once_per_epoch(data, workers):
    """Under the InputContext each worker gets from `distribute_datasets_from_function`, as the trainer runs it."""
    out, manifest = data
    spec = spec_for(manifest, input_samples=250)
    files = manifest.shard_files(out, "train")
    every = sorted((x["record_id"], x["window_index"]) for x in
                   (schema.decode_example(r.numpy()) for r in tf.data.TFRecordDataset(files)))
    assert len(every) == manifest.splits["train"].examples and len(set(every)) == len(every)
    orders = [[], []]  # per epoch, per worker: its examples in order
    for worker in range(workers):
        context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                             num_replicas_in_sync=workers)
        examples = input_pipeline.training_examples(out, manifest, "train", spec, seed=5, input_context=context)
        count = len(range(worker, len(every), workers))  # the trainer's rule: examples worker, worker + N, ...
        stream = input_pipeline.epochs_of(examples, count, seed=5, buffer_size=64).take(2 * count)
        part = [(x["record_id"].decode(), x["window_index"], x["epoch"]) for x in stream.as_numpy_iterator()]
        for epoch in (0, 1):
            assert {e for *_, e in part[epoch * count:(epoch + 1) * count]} == {epoch}
            orders[epoch].append([(record, window) for record, window, _ in part[epoch * count:(epoch + 1) * count]])
    for ids in orders:
        assert sum(len(part) for part in ids) == len(every)  # nothing twice ...
        assert sorted(sum(ids, [])) == every  # ... nothing missing: together, every example once
        assert max(map(len, ids)) - min(map(len, ids)) <= 1
    assert [sorted(part) for part in orders[0]] == [sorted(part) for part in orders[1]]  # each worker keeps its part
    assert orders[0] != orders[1]  # reshuffled between epochs
    # What the trainer's input function makes of it: per-replica batches, the epoch's steps.
    context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=workers - 1,
                                         num_replicas_in_sync=workers)
    steps = input_pipeline.batches_per_epoch(manifest, "train", spec, 4 * workers, True, drop_remainder=True)
    batches = input_pipeline.make_dataset(out, manifest, "train", spec, 4 * workers, True,
                                          AugmentConfig(crop_samples=250), seed=5, drop_remainder=True,
                                          input_context=context)
    assert [x.shape[0] for x, _ in batches] == [4] * steps


def test_a_resumed_epoch_gets_the_batches_an_uninterrupted_run_would(data):
    out, manifest = data
    spec = spec_for(manifest, input_samples=250)
    steps = input_pipeline.batches_per_epoch(manifest, "train", spec, 6, True)

    def batches(first_epoch: int, count: int) -> list[np.ndarray]:
        dataset = input_pipeline.make_dataset(out, manifest, "train", spec, 6, True,
                                              AugmentConfig(crop_samples=250, noise_std=0.1), seed=1, repeat=True,
                                              first_epoch=first_epoch)
        return [x.numpy() for x, _ in dataset.take(count)]

    uninterrupted = batches(0, 3 * steps)
    for resumed, expected in zip(batches(2, steps), uninterrupted[2 * steps:]):
        np.testing.assert_array_equal(resumed, expected)

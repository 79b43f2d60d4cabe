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


def test_training_data_is_augmented_and_reshuffled(data):
    out, manifest = data
    spec = spec_for(manifest, input_samples=500)
    dataset = input_pipeline.make_dataset(out, manifest, "train", spec, 1000, True,
                                          AugmentConfig(crop_samples=500, noise_std=0.1), seed=3)
    epochs = [next(iter(dataset))[0].numpy() for _ in range(2)]
    assert epochs[0].shape == (manifest.splits["train"].examples, 500, 12)
    assert not np.allclose(epochs[0], epochs[1])

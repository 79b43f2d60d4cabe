"""The typed manifest: what the converter writes is what every later stage reads, and the spec it derives is
consistent with the data."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ecg_tfx.core import schema
from ecg_tfx.core.manifest import FILENAME, Manifest, ShardFile
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.dsp.preprocessing import PreprocessConfig


def test_saved_manifest_loads_equal_and_lists_its_shards(tiny_conversion, tmp_path):
    data_dir, manifest = tiny_conversion
    assert Manifest.load(str(data_dir)) == manifest
    assert all(isinstance(shard, ShardFile) for split in manifest.splits.values() for shard in split.shards)
    files = manifest.shard_files(str(data_dir), "train")
    assert files == [str(data_dir / shard.file) for shard in manifest.splits["train"].shards] and files
    manifest.save(str(tmp_path))
    assert json.loads((tmp_path / FILENAME).read_text()) == json.loads((data_dir / FILENAME).read_text())


def test_unknown_split_and_other_schema_versions_are_refused(tiny_conversion, tmp_path):
    data_dir, manifest = tiny_conversion
    with pytest.raises(ValueError, match="no split 'holdout'; it has"):
        manifest.shard_files(str(data_dir), "holdout")
    dataclasses.replace(manifest, schema_version=schema.SCHEMA_VERSION + 1).save(str(tmp_path))
    with pytest.raises(ValueError, match="convert again"):
        Manifest.load(str(tmp_path))


def test_model_spec_follows_the_data(tiny_conversion):
    _, manifest = tiny_conversion
    spec = manifest.model_spec("resnet1d", input_seconds=2.5, eval_stride_seconds=0.5, lowpass_hz=40)
    assert (spec.labels, spec.leads, spec.multi_label) == (manifest.labels, manifest.leads, manifest.multi_label)
    assert (spec.sample_rate_hz, spec.window_samples, spec.input_samples, spec.eval_stride_samples) == (
        500, 5000, 1250, 250)
    assert spec.preprocessing == PreprocessConfig(500, highpass_hz=0.5, lowpass_hz=40)
    assert manifest.model_spec("cnn").input_samples == manifest.window_samples  # 0 s: the stored window
    with pytest.raises(ValueError, match="exceeds the stored window"):
        manifest.model_spec("cnn", input_seconds=10.5)
    manifest.check_compatible(spec)
    with pytest.raises(ValueError, match="sample_rate_hz: model 250, data 500"):
        manifest.check_compatible(dataclasses.replace(
            spec, sample_rate_hz=250, window_samples=2500, input_samples=625, preprocessing=PreprocessConfig(250)))


def test_model_spec_refuses_a_second_sample_rate(tiny_conversion):
    spec = tiny_conversion[1].model_spec("cnn", input_seconds=2.5)
    with pytest.raises(ValueError, match="preprocessing runs at 250 Hz but the model's sample rate is 500 Hz"):
        dataclasses.replace(spec, preprocessing=PreprocessConfig(250))
    with pytest.raises(ValueError, match="input_samples=6000"):
        dataclasses.replace(spec, input_samples=6000)
    assert ModelSpec.from_json(json.loads(spec.dumps())) == spec


def test_class_weights_from_training_counts(tiny_conversion):
    _, manifest = tiny_conversion
    train = dataclasses.replace(manifest.splits["train"], class_examples={"a": 30, "b": 10})
    weights = dataclasses.replace(manifest, splits={**manifest.splits, "train": train}).class_weights(("a", "b"))
    assert weights == pytest.approx([40 / 60, 40 / 20])
    # the weighted mean over examples is 1: no change to the loss scale
    assert (30 * weights[0] + 10 * weights[1]) / 40 == pytest.approx(1.0)

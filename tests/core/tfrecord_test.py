"""The TensorFlow-free TFRecord writer: byte for byte what `tf.io.TFRecordWriter` writes (plain and GZIP), and
TensorFlow reads it with its CRC checks."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from ecg_tfx.core import schema, storage, tfrecord


def examples() -> list[bytes]:
    """Real examples (10-s 12-lead windows, ~120 kB), a tiny record and an empty one."""
    rng = np.random.default_rng(0)
    windows = [schema.make_example(rng.standard_normal((2500, 12)).astype(np.float32), ["i"] * 12, 250, [i % 3],
                                   ["mi"], f"r{i}", f"p{i}", i) for i in range(5)]
    return windows + [b"x", b""]


@pytest.mark.parametrize("compression", schema.COMPRESSIONS)
def test_shards_are_byte_identical_to_tensorflows_and_read_back(tmp_path: pathlib.Path, compression: str):
    records = examples()
    ours, theirs = tmp_path / "ours.tfrecord", tmp_path / "theirs.tfrecord"
    with storage.tfrecord_writer(str(ours), compression) as writer:
        for record in records:
            writer.write(record)
    options = tf.io.TFRecordOptions(compression_type=schema.tfrecord_compression(compression))
    with tf.io.TFRecordWriter(str(theirs), options) as writer:
        for record in records:
            writer.write(record)
    assert ours.read_bytes() == theirs.read_bytes()
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(ours), schema.tfrecord_compression(compression))]
    assert read == records


@pytest.mark.parametrize("offset, what", [(12, "data"), (9, "length CRC"), (-1, "data CRC")])
def test_tensorflow_refuses_a_record_whose_crc_does_not_match(tmp_path: pathlib.Path, offset: int, what: str):
    path = tmp_path / "one.tfrecord"
    with storage.tfrecord_writer(str(path), "NONE") as writer:
        writer.write(b"0123456789")
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(tf.errors.DataLossError, match="corrupted record"):
        list(tf.data.TFRecordDataset(str(path)))


def test_crc32c_is_castagnolis_and_masked_as_tensorflow_masks_it():
    # RFC 3720 B.4: 32 bytes of zeros give CRC32C 0x8A9136AA; the check value of b"123456789" is 0xE3069283.
    for data, crc in ((bytes(32), 0x8A9136AA), (b"123456789", 0xE3069283)):
        assert tfrecord.masked_crc32c(data) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_a_failed_block_publishes_nothing(tmp_path: pathlib.Path):
    path = tmp_path / "shard.tfrecord"
    with pytest.raises(RuntimeError, match="stop"), storage.tfrecord_writer(str(path), "GZIP") as writer:
        writer.write(b"abc")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []

"""The TFRecord schema: the one place that knows feature keys and how a window is (de)serialized.

Each example is one window of one record: the signal as raw little-endian float32 bytes in
millivolts with its shape [time, leads], the lead names, the sample rate, the labels (ids into the
run's vocabulary and their names), and where the window came from.

Examples are built and decoded with the protobuf package alone (`example_proto`); TensorFlow is imported only by the
parsing functions, so a conversion worker never loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ecg_tfx.core import compat, example_proto

if TYPE_CHECKING:
    import tensorflow as tf

SCHEMA_VERSION = 1

SIGNAL = "ecg/signal"
SHAPE = "ecg/shape"
LEADS = "ecg/leads"
SAMPLE_RATE = "ecg/sample_rate_hz"
LABEL_IDS = "label/ids"
LABEL_NAMES = "label/names"
RECORD_ID = "record_id"
PATIENT_ID = "patient_id"
WINDOW_INDEX = "window_index"

COMPRESSIONS = ("NONE", "GZIP")  # how shards may be compressed (manifest's `compression`)


def tfrecord_compression(compression: str) -> str:
    """The `compression_type` TensorFlow's TFRecord readers and writers take for a manifest compression."""
    return "" if compression == "NONE" else compression


def shard_suffix(compression: str) -> str:
    return ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"


def shard_name(split: str, index: int, count: int, compression: str) -> str:
    """`{split}-{index:05d}-of-{count:05d}.tfrecord[.gz]`, as TFX and Beam name shards."""
    return f"{split}-{index:05d}-of-{count:05d}{shard_suffix(compression)}"


def _bytes(values: Sequence[bytes]) -> example_proto.Feature:
    return example_proto.Feature(bytes_list=example_proto.BytesList(value=list(values)))


def _ints(values: Sequence[int]) -> example_proto.Feature:
    return example_proto.Feature(int64_list=example_proto.Int64List(value=list(values)))


def make_example(
    signal: np.ndarray,
    leads: Sequence[str],
    sample_rate_hz: float,
    label_ids: Sequence[int],
    label_names: Sequence[str],
    record_id: str,
    patient_id: str,
    window_index: int,
) -> bytes:
    """Serializes one window ([time, leads] float32 millivolts) as a tf.train.Example (the bytes TensorFlow's
    `tf.train.Example(...).SerializeToString(deterministic=True)` gives)."""
    signal = np.ascontiguousarray(signal, dtype="<f4")
    features = {
        SIGNAL: _bytes([signal.tobytes()]),
        SHAPE: _ints(signal.shape),
        LEADS: _bytes([lead.encode() for lead in leads]),
        SAMPLE_RATE: example_proto.Feature(float_list=example_proto.FloatList(value=[sample_rate_hz])),
        LABEL_IDS: _ints(label_ids),
        LABEL_NAMES: _bytes([name.encode() for name in label_names]),
        RECORD_ID: _bytes([record_id.encode()]),
        PATIENT_ID: _bytes([patient_id.encode()]),
        WINDOW_INDEX: _ints([window_index]),
    }
    return compat.serialize(example_proto.Example(features=example_proto.Features(feature=features)))


def feature_spec() -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """The parsing spec for `tf.io.parse_example`; labels are variable length (multi-label)."""
    import tensorflow as tf

    return {
        SIGNAL: tf.io.FixedLenFeature([], tf.string),
        SHAPE: tf.io.FixedLenFeature([2], tf.int64),
        LEADS: tf.io.VarLenFeature(tf.string),
        SAMPLE_RATE: tf.io.FixedLenFeature([], tf.float32),
        LABEL_IDS: tf.io.VarLenFeature(tf.int64),
        LABEL_NAMES: tf.io.VarLenFeature(tf.string),
        RECORD_ID: tf.io.FixedLenFeature([], tf.string),
        PATIENT_ID: tf.io.FixedLenFeature([], tf.string),
        WINDOW_INDEX: tf.io.FixedLenFeature([], tf.int64),
    }


def parse_examples(serialized: tf.Tensor, window_samples: int, num_leads: int) -> dict[str, tf.Tensor]:
    """Parses a batch of serialized examples (TF ops only) into dense tensors.

    Returns `signal` float32 [batch, window_samples, num_leads], `label_ids` as a RaggedTensor,
    and `record_id`, `patient_id`, `window_index`.
    """
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, feature_spec())
    signal = tf.io.decode_raw(parsed[SIGNAL], tf.float32, little_endian=True)
    signal = tf.reshape(signal, [-1, window_samples, num_leads])
    return {
        "signal": signal,
        "label_ids": tf.RaggedTensor.from_sparse(parsed[LABEL_IDS]),
        "record_id": parsed[RECORD_ID],
        "patient_id": parsed[PATIENT_ID],
        "window_index": parsed[WINDOW_INDEX],
    }


def decode_example(serialized: bytes) -> dict:
    """Decodes one serialized example into numpy/python values (for tests, tools and audits)."""
    feature = example_proto.Example.FromString(serialized).features.feature
    shape = tuple(feature[SHAPE].int64_list.value)
    return {
        "signal": np.frombuffer(feature[SIGNAL].bytes_list.value[0], dtype="<f4").reshape(shape),
        "leads": [v.decode() for v in feature[LEADS].bytes_list.value],
        "sample_rate_hz": feature[SAMPLE_RATE].float_list.value[0],
        "label_ids": list(feature[LABEL_IDS].int64_list.value),
        "label_names": [v.decode() for v in feature[LABEL_NAMES].bytes_list.value],
        "record_id": feature[RECORD_ID].bytes_list.value[0].decode(),
        "patient_id": feature[PATIENT_ID].bytes_list.value[0].decode(),
        "window_index": feature[WINDOW_INDEX].int64_list.value[0],
    }

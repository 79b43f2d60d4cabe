"""Examples built from the protobuf package alone serialize as TensorFlow's `tf.train.Example` does, and parse
TensorFlow's bytes (workers write shards with them and never import TensorFlow)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ecg_tfx.core import compat, example_proto, schema


def test_the_same_features_give_the_same_bytes_as_tensorflows_example():
    values = {"bytes": [b"x", "é".encode(), b""], "floats": [0.5, -3.25, 1e-30], "ints": [0, -5, 2**40, 2**63 - 1],
              "empty": []}

    def example(module):
        feature = {
            "b": module.Feature(bytes_list=module.BytesList(value=values["bytes"])),
            "f": module.Feature(float_list=module.FloatList(value=values["floats"])),
            "i": module.Feature(int64_list=module.Int64List(value=values["ints"])),
            "e": module.Feature(bytes_list=module.BytesList(value=values["empty"])),
            "n": module.Feature(),
        }
        return compat.serialize(module.Example(features=module.Features(feature=feature)))

    ours = example(example_proto)
    assert ours == example(tf.train)
    assert example_proto.Example.FromString(ours).features.feature["i"].int64_list.value == values["ints"]


def test_a_window_example_parses_with_tensorflow():
    signal = np.random.default_rng(1).standard_normal((500, 3)).astype(np.float32)
    serialized = schema.make_example(signal, ["i", "ii", "v1"], 100, [2, 0], ["a", "b"], "rec", "pat", 7)
    parsed = tf.train.Example.FromString(serialized).features.feature
    assert list(parsed[schema.SHAPE].int64_list.value) == [500, 3]
    assert parsed[schema.RECORD_ID].bytes_list.value == [b"rec"]
    decoded = schema.decode_example(serialized)
    np.testing.assert_array_equal(decoded["signal"], signal)
    assert (decoded["label_ids"], decoded["window_index"], decoded["sample_rate_hz"]) == ([2, 0], 7, 100.0)

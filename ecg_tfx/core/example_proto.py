"""`tf.train.Example` and its parts as protobuf messages built from the protobuf package alone.

TensorFlow's own `example_pb2` cannot be imported without importing all of TensorFlow, which costs a conversion
worker ~4 s. These classes come from the same message definitions (tensorflow/core/example/{example,feature}.proto),
declared here in a private descriptor pool, so they serialize to the same bytes and parse TensorFlow's bytes.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "tensorflow"


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="ecg_tfx/example.proto", package=_PACKAGE, syntax="proto3")

    def message(parent, name: str, fields: list[tuple], map_entry: bool = False) -> descriptor_pb2.DescriptorProto:
        """`fields`: (name, number, label, type, message type name or '', oneof index or None)."""
        added = parent.add(name=name)
        if map_entry:
            added.options.map_entry = True
        for field_name, number, label, kind, type_name, oneof in fields:
            field = added.field.add(name=field_name, number=number, label=label, type=kind, json_name=field_name)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
            if kind in (_FIELD.TYPE_FLOAT, _FIELD.TYPE_INT64):
                field.options.packed = True  # as feature.proto declares them
            if oneof is not None:
                field.oneof_index = oneof
        return added

    repeated, optional = _FIELD.LABEL_REPEATED, _FIELD.LABEL_OPTIONAL
    message(proto.message_type, "BytesList", [("value", 1, repeated, _FIELD.TYPE_BYTES, "", None)])
    message(proto.message_type, "FloatList", [("value", 1, repeated, _FIELD.TYPE_FLOAT, "", None)])
    message(proto.message_type, "Int64List", [("value", 1, repeated, _FIELD.TYPE_INT64, "", None)])
    feature = message(proto.message_type, "Feature", [
        ("bytes_list", 1, optional, _FIELD.TYPE_MESSAGE, "BytesList", 0),
        ("float_list", 2, optional, _FIELD.TYPE_MESSAGE, "FloatList", 0),
        ("int64_list", 3, optional, _FIELD.TYPE_MESSAGE, "Int64List", 0)])
    feature.oneof_decl.add(name="kind")
    features = message(proto.message_type, "Features", [
        ("feature", 1, repeated, _FIELD.TYPE_MESSAGE, "Features.FeatureEntry", None)])
    message(features.nested_type, "FeatureEntry", [
        ("key", 1, optional, _FIELD.TYPE_STRING, "", None),
        ("value", 2, optional, _FIELD.TYPE_MESSAGE, "Feature", None)], map_entry=True)
    message(proto.message_type, "Example", [("features", 1, optional, _FIELD.TYPE_MESSAGE, "Features", None)])
    return proto


_POOL = descriptor_pool.DescriptorPool()  # private: TensorFlow registers its own tensorflow.Example in the default one
_POOL.Add(_file())


def _class(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


BytesList = _class("BytesList")
FloatList = _class("FloatList")
Int64List = _class("Int64List")
Feature = _class("Feature")
Features = _class("Features")
Example = _class("Example")

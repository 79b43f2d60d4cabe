"""Test helper: which ops a traced TF function uses (to prove exports need only stock ops)."""

from __future__ import annotations

import collections

import tensorflow as tf


def stock_op_types(concrete: tf.types.experimental.ConcreteFunction) -> set[str]:
    """Every op type in a traced function's graph, including nested function bodies (loops, conds)."""
    graph_def = concrete.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def tflite_op_counts(content: bytes) -> collections.Counter[str]:
    """How many times a TFLite flatbuffer's subgraphs use each operator: builtins by name, custom and Flex ops as
    'CUSTOM:<code>'."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.python.schema_util import get_builtin_code_from_operator_code

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    codes = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = get_builtin_code_from_operator_code(code)
        codes.append(f"CUSTOM:{code.CustomCode().decode()}" if builtin == schema.BuiltinOperator.CUSTOM
                     else names[builtin])
    counts = collections.Counter({name: 0 for name in codes})
    for index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(index)
        counts.update(codes[subgraph.Operators(i).OpcodeIndex()] for i in range(subgraph.OperatorsLength()))
    return counts


def tflite_op_names(content: bytes) -> set[str]:
    """The operator names a TFLite flatbuffer uses: builtins by name, custom and Flex ops as 'CUSTOM:<code>'."""
    return set(tflite_op_counts(content))


def saved_model_op_counts(path: str) -> collections.Counter[str]:
    """How many nodes of each op type a SavedModel's graph and function library hold (all signatures together)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(f"{path}/saved_model.pb", "rb") as f:
        saved_model.ParseFromString(f.read())
    graph = saved_model.meta_graphs[0].graph_def
    counts = collections.Counter(node.op for node in graph.node)
    for function in graph.library.function:
        counts.update(node.op for node in function.node_def)
    return counts

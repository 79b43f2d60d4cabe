"""Test helper: which ops a traced TF function uses (to prove exports need only stock ops)."""

from __future__ import annotations

import tensorflow as tf


def stock_op_types(concrete: tf.types.experimental.ConcreteFunction) -> set[str]:
    """Every op type in a traced function's graph, including nested function bodies (loops, conds)."""
    graph_def = concrete.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def tflite_op_names(content: bytes) -> set[str]:
    """The operator names a TFLite flatbuffer uses: builtins by name, custom and Flex ops as 'CUSTOM:<code>'."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.python.schema_util import get_builtin_code_from_operator_code

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    found = set()
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = get_builtin_code_from_operator_code(code)
        found.add(f"CUSTOM:{code.CustomCode().decode()}" if builtin == schema.BuiltinOperator.CUSTOM
                  else names[builtin])
    return found

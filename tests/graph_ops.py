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

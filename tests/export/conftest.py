"""Hand-built ONNX graphs shared by the rewrite driver's tests and the rewrite rules' tests."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

TOKENS = 17


def _topk_slice_model(
    ends: list[list[int]], k_source: str = "initializer", axis: int = -1, slice_axis: int = 1,
    values_output: bool = False, start: int = 0,
) -> onnx.ModelProto:
    """x (batch, 17) -> TopK(K=17) -> one Slice of the indices per entry of ``ends``, each a graph output.

    ``k_source``: K is an ``initializer``, a ``constant_node`` or a graph ``input`` (not a constant).
    """
    nodes, inits = [], [helper.make_tensor("axes", TensorProto.INT64, [1], [slice_axis]),
                        helper.make_tensor("start", TensorProto.INT64, [1], [start])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", TOKENS])]
    if k_source == "initializer":
        inits.append(helper.make_tensor("K", TensorProto.INT64, [1], [TOKENS]))
    elif k_source == "constant_node":
        k_value = helper.make_tensor("k", TensorProto.INT64, [1], [TOKENS])
        nodes.append(helper.make_node("Constant", [], ["K"], value=k_value))
    else:
        inputs.append(helper.make_tensor_value_info("K", TensorProto.INT64, [1]))
    nodes.append(helper.make_node("TopK", ["x", "K"], ["values", "indices"], name="sort", axis=axis))
    outputs = []
    if values_output:
        outputs.append(helper.make_tensor_value_info("values", TensorProto.FLOAT, ["batch", TOKENS]))
    for i, end in enumerate(ends):
        inits.append(helper.make_tensor(f"end{i}", TensorProto.INT64, [1], end))
        slice_inputs = ["indices", "start", f"end{i}", "axes"]
        nodes.append(helper.make_node("Slice", slice_inputs, [f"kept{i}"], name=f"slice{i}"))
        outputs.append(helper.make_tensor_value_info(f"kept{i}", TensorProto.INT64, ["batch", None]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.fixture
def topk_slice_model():
    """The builder of argsort+slice graphs (a fixture, so tests in sub-folders can use it)."""
    return _topk_slice_model

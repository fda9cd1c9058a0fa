"""The numeric check every rule test uses (conftest.py) fails on NaN/Inf, even when both sides agree."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

ABS = [helper.make_node("Abs", ["x"], ["y"])]
NAN = [helper.make_node("Sqrt", ["x"], ["y"])]  # standard-normal inputs: about half are negative
INF = [helper.make_node("Sub", ["x", "x"], ["zero"]), helper.make_node("Reciprocal", ["zero"], ["y"])]


def _model(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_identical_finite_outputs_pass(assert_same_outputs):
    assert_same_outputs(_model(ABS), _model(ABS))


@pytest.mark.parametrize("nodes", [NAN, INF], ids=["nan", "inf"])
def test_nan_or_inf_outputs_fail(assert_same_outputs, nodes):
    with pytest.raises(AssertionError, match="output y is not finite"):
        assert_same_outputs(_model(nodes), _model(nodes))

"""Fusion regressions (issue 15): the graph ONNX Runtime runs for our exports stays fully fused.

The node bounds are those of the first fixed version, on conftest's tiny model (4 blocks, 16
patch tokens, opset 20): 124 nodes written, 107 after ONNX Runtime's graph optimisation (torch's
own export of it has 155). A regression in any fusion adds nodes and crosses them.
"""

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import tiny_model
from vitdeploy.export import check, fuse
from vitdeploy.export.onnx import ExportConfig, export_onnx, report_path
from vitdeploy.export.reference import export_torchscript

WRITTEN_NODE_BOUND = 124
ONNXRUNTIME_NODE_BOUND = 107
DEPTH = 4


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion") / "tiny.onnx"
    return out, export_onnx(tiny_model(), out)


def test_onnxruntime_runs_the_default_export_fully_fused(default_export):
    _, report = default_export
    after = report.fusion.onnxruntime
    assert "Erf" not in after
    assert after["com.microsoft:BiasGelu"] == DEPTH - 1  # fc1's bias and GELU in one kernel
    assert after["Gelu"] == 1  # the last block's, on the class token only: its fc1 bias is in a Gemm
    assert after["com.microsoft:FusedMatMul"] == DEPTH  # Q·Kᵀ with the key transpose and scale folded in
    assert sum(after.values()) <= ONNXRUNTIME_NODE_BOUND
    assert sum(report.fusion.written.values()) <= WRITTEN_NODE_BOUND


def test_the_key_transpose_is_one_4d_transpose_per_block(default_export):
    out, report = default_export
    perms = [tuple(helper.get_attribute_value(a)) for n in onnx.load(str(out)).graph.node
             if n.op_type == "Transpose" for a in n.attribute if a.name == "perm"]
    assert report.fusion.passes["key_transpose"] == DEPTH
    assert perms.count((0, 1, 3, 2)) == DEPTH
    assert perms.count((0, 2, 1)) == 1  # only the patch embedding's; no key goes through 3-D any more


def test_after_the_last_attention_only_the_class_token_is_computed(default_export):
    out, report = default_export
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(out))).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.output]}
    last_softmax = max(i for i, n in enumerate(graph.node) if n.op_type == "Softmax")
    one_token = Counter(n.op_type for n in graph.node[last_softmax:] if ranks.get(n.output[0]) == 2)
    assert report.fusion.passes["token_gather_first"] > 0
    # the output projection, fc1, fc2; norm2 and the final norm; the GELU: (batch, width), no token axis
    assert {op: one_token[op] for op in ("MatMul", "LayerNormalization", "Gelu")} == \
        {"MatMul": 3, "LayerNormalization": 2, "Gelu": 1}


def test_the_report_records_op_counts_before_and_after_onnxruntime(default_export):
    out, report = default_export
    saved = json.loads(report_path(out).read_text())["fusion"]
    assert saved["nodes"] == {stage: sum(counts.values()) for stage, counts in saved["op_counts"].items()}
    assert saved["nodes"]["exported"] > saved["nodes"]["written"] > saved["nodes"]["onnxruntime"] > 0
    assert not onnx.load(str(out)).graph.value_info  # ONNX Runtime runs the graph faster without them


def test_opset_18_gelu_is_fused_by_onnxruntimes_optimizer_for_onnxruntime_only(tmp_path):
    model = tiny_model()
    ort = export_onnx(model, tmp_path / "ort.onnx", ExportConfig(opset=18))
    trt = export_onnx(model, tmp_path / "trt.onnx", ExportConfig(opset=18, target="tensorrt"))
    assert ort.fusion.passes["bias_gelu"] == DEPTH and ort.audit.passed
    assert ort.fusion.written["com.microsoft:BiasGelu"] == DEPTH and "Erf" not in ort.fusion.written
    assert "bias_gelu" not in trt.fusion.passes and trt.audit.passed
    assert trt.fusion.written["Erf"] == DEPTH and not any(":" in op for op in trt.fusion.written)


def test_contrib_ops_pass_the_audit_for_onnxruntime_only():
    node = helper.make_node("BiasGelu", ["x", "b"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor("b", TensorProto.FLOAT, [4], [0.0] * 4)])
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    assert check.audit(model, "onnxruntime").passed
    assert "custom-domain" in check.audit(model, "tensorrt").violations[0]


def key_transpose_graph(flat: list[int], out: list[int]) -> onnx.ModelProto:
    """key (batch, 4, 5, 3) → Reshape(flat) → Transpose(0, 2, 1) → Reshape(out)."""
    nodes = [helper.make_node("Reshape", ["key", "flat"], ["k3"]),
             helper.make_node("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["k3t", "out"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("key", TensorProto.FLOAT, ["batch", 4, 5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [helper.make_tensor("flat", TensorProto.INT64, [3], flat),
                               helper.make_tensor("out", TensorProto.INT64, [4], out)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("out, rewritten", [
    ([-1, 4, 3, 5], True),    # splits the leading axis back: the key with its last two axes swapped
    ([-1, 4, 5, 3], False),   # a different tensor: must stay as it is
    ([-1, 2, 3, 10], False),
])
def test_key_transpose_rewrites_exactly_the_swap_of_the_last_two_axes(tmp_path, out, rewritten):
    path = tmp_path / "k.onnx"
    onnx.save(key_transpose_graph([-1, 5, 3], out), str(path))
    key = np.random.default_rng(0).standard_normal((3, 4, 5, 3)).astype(np.float32)
    before = check.run_session(check.ort_session(path), key)
    report = fuse.fuse(path, "tensorrt", 20)
    assert report.passes["key_transpose"] == int(rewritten)
    assert np.array_equal(check.run_session(check.ort_session(path), key), before)


def test_the_torchscript_reference_export_matches_pytorch(tmp_path):
    parity = export_torchscript(tiny_model(), tmp_path / "ts.onnx")
    assert parity.passed and parity.max_abs_diff <= 1e-4


def token_add_graph(other_shape: list) -> onnx.ModelProto:
    """x (batch, 5, 3) + other → Gather(token 2, axis 1) → y (batch, 3)."""
    nodes = [helper.make_node("Add", ["x", "other"], ["s"]),
             helper.make_node("Gather", ["s", "token"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 3]),
                                           helper.make_tensor_value_info("other", TensorProto.FLOAT, other_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [helper.make_tensor("token", TensorProto.INT64, [], [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("other_shape, moved", [
    (["batch", 5, 3], True),   # a residual: both sides are gathered
    ([3], True),               # a bias: the same for every token
    (["batch", 1, 3], False),  # broadcast along the tokens: gathering it would be wrong
])
def test_the_token_gather_moves_only_through_token_wise_inputs(tmp_path, other_shape, moved):
    path = tmp_path / "g.onnx"
    onnx.save(token_add_graph(other_shape), str(path))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    other = rng.standard_normal([2 if d == "batch" else d for d in other_shape]).astype(np.float32)

    def run() -> np.ndarray:
        return check.ort_session(path).run(None, {"x": x, "other": other})[0]

    before = run()
    assert fuse.fuse(path, "tensorrt", 20).passes["token_gather_first"] == int(moved)
    assert np.array_equal(run(), before)

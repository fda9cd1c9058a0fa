"""The argsort_slice_to_topk rule on hand-built TopK + Slice graphs (tests/export/conftest.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from vitdeploy.export.check import op_counts
from vitdeploy.export.rewrite import apply_rules
from vitdeploy.export.rules.argsort_slice_to_topk import ArgsortSliceToTopK

TOKENS = 17  # the axis length of the hand-built graphs
INT64_MAX = np.iinfo(np.int64).max
RULE = ArgsortSliceToTopK()


def _pass_on(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    return apply_rules(gs.import_onnx(onnx.shape_inference.infer_shapes(model)), [RULE])


def _topk_k(model: onnx.ModelProto) -> int:
    (topk,) = [node for node in model.graph.node if node.op_type == "TopK"]
    (k,) = [init for init in model.graph.initializer if init.name == topk.input[1]]
    return int(onnx.numpy_helper.to_array(k)[0])


# --- rewritten: same outputs on ONNX Runtime ------------------------------------------------


@pytest.mark.parametrize("ends, axis, k", [
    ([[5]], -1, 5),
    ([[-12]], -1, 5),  # negative end, counted from the end
    ([[1]], 1, 1),
    ([[5], [5]], 1, 5),  # two Slices of the same length: the second is rerouted
])
def test_rewrite_keeps_the_outputs(topk_slice_model, run_rule, assert_same_outputs, ends, axis, k):
    before = topk_slice_model(ends, axis=axis)
    after, applied, skipped = run_rule(RULE, before)
    assert skipped == [] and [(a["rule"], a["old_k"], a["new_k"]) for a in applied] == [(RULE.name, TOKENS, k)]
    assert _topk_k(after) == k and "Slice" not in op_counts(after.graph.node)
    assert_same_outputs(before, after)


def test_a_wrong_rewrite_fails_the_numeric_check(topk_slice_model, run_rule, assert_same_outputs):
    before = topk_slice_model([[5]])
    after, _, _ = run_rule(RULE, before)
    (topk,) = [node for node in after.graph.node if node.op_type == "TopK"]
    topk.attribute.append(onnx.helper.make_attribute("largest", 0))
    with pytest.raises(AssertionError, match="output kept0"):
        assert_same_outputs(before, after)


@pytest.mark.parametrize("end, k", [(5, 5), (-12, 5), (1, 1)])
def test_pass_normalizes_negative_ends(topk_slice_model, end, k):
    applied, skipped = _pass_on(topk_slice_model([[end]]))
    assert skipped == [] and [(a["old_k"], a["new_k"], a["axis"]) for a in applied] == [(TOKENS, k, 1)]


# --- left alone ------------------------------------------------------------------------------


@pytest.mark.parametrize("options, reason", [
    ({"start": 1}, "starts at 1, not 0"),
    ({"k_source": "input"}, "K is not a constant"),
])
def test_left_alone_with_its_reason(topk_slice_model, run_rule, options, reason):
    before = topk_slice_model([[5]], **options)
    after, applied, skipped = run_rule(RULE, before)
    assert applied == [] and [(s["rule"], s["node"]) for s in skipped] == [(RULE.name, "sort")]
    assert reason in skipped[0]["reason"]
    assert op_counts(after.graph.node) == op_counts(before.graph.node)


@pytest.mark.parametrize("end", [INT64_MAX, TOKENS, 100])
def test_pass_treats_slices_to_the_end_as_a_real_sort(topk_slice_model, end):
    applied, skipped = _pass_on(topk_slice_model([[end]]))
    assert applied == [] and "keeps all 17 entries" in skipped[0]["reason"]


def test_pass_skips_slices_on_another_axis(topk_slice_model):
    applied, skipped = _pass_on(topk_slice_model([[5]], slice_axis=0))
    assert applied == [] and "not only the sort axis" in skipped[0]["reason"]


def test_pass_skips_different_slice_lengths(topk_slice_model):
    applied, skipped = _pass_on(topk_slice_model([[5], [6]]))
    assert applied == [] and "different lengths [5, 6]" in skipped[0]["reason"]


def test_pass_skips_when_values_are_used_unsliced_and_leaves_the_node_alone(topk_slice_model):
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(topk_slice_model([[5]], values_output=True)))
    applied, skipped = apply_rules(graph, [RULE])
    assert applied == [] and "graph output" in skipped[0]["reason"]
    topk = next(n for n in graph.nodes if n.op == "TopK")
    assert int(topk.inputs[1].values[0]) == TOKENS and topk.outputs[1].name == "indices"


def test_genuine_topk_is_not_a_match(topk_slice_model):
    model = topk_slice_model([[5]])
    (k,) = [init for init in model.graph.initializer if init.name == "K"]
    k.CopyFrom(onnx.numpy_helper.from_array(np.array([TOKENS - 1], dtype=np.int64), "K"))
    assert _pass_on(model) == ([], [])

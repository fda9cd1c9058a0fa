"""argsort + slice to the first k  ->  TopK(k).

DynamicViT/EViT-style code keeps the top-k tokens with ``torch.argsort(score)[:, :k]`` (or
``torch.sort`` and the same slice). Both torch exporters turn that into a full sort followed
by a slice::

    K = length of the axis            (Shape -> Gather [-> Reshape], or a constant)
    values, indices = TopK(score, K, axis=a, largest=l)
    kept = Slice(indices, starts=[0], ends=[k], axes=[a])   (steps absent or [1])

The op audit rejects such a TopK, since its K equals its axis length. When every use of the
TopK outputs is a Slice that keeps the same first ``k < K`` entries along the TopK axis, the
pair is replaced by ``TopK(score, k, axis=a, largest=l, sorted=1)``, whose outputs take over
the Slice outputs. The first k entries of a sorted full TopK are exactly a sorted TopK of k,
so the rewrite is exact.

Needs K as a constant and the axis length static: the driver's constant folding and shape
probing provide both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from vitdeploy.export.rules import RULES, Match, RewriteRule


class _NotRewritable(Exception):
    """Why a full-sort TopK is left as it is (the message goes into the report)."""


@dataclass
class _Plan:
    """What the rewrite of one full-sort TopK does."""

    axis: int
    length: int
    k: int
    slices_by_output: dict[int, list[gs.Node]]  # TopK output index -> the Slices of it


@RULES.register
class ArgsortSliceToTopK(RewriteRule):
    name = "argsort_slice_to_topk"
    description = "a full-length TopK (argsort) whose outputs are only sliced to the first k becomes TopK(k)"

    def match(self, graph: gs.Graph) -> list[Match]:
        """Every TopK except genuine top-k ones (K known to be below the axis length)."""
        return [Match(graph, node) for node in graph.nodes if node.op == "TopK" and not _is_genuine_topk(node)]

    def check(self, match: Match) -> str | None:
        try:
            _plan(match)
        except _NotRewritable as reason:
            return str(reason)
        return None

    def apply(self, graph: gs.Graph, match: Match) -> dict:
        plan = _plan(match)
        _replace_with_topk_k(graph, match, plan)
        return {
            "axis": plan.axis,
            "largest": int(match.node.attrs.get("largest", 1)),
            "old_k": plan.length,
            "new_k": plan.k,
            "slices": [s.name for slices in plan.slices_by_output.values() for s in slices],
        }

    def unknown_shapes(self, graph: gs.Graph) -> list[gs.Tensor]:
        return [node.inputs[0] for node in graph.nodes if node.op == "TopK" and _axis_length(node) is None]


# --- analysis ---------------------------------------------------------------------------------


def _is_genuine_topk(node: gs.Node) -> bool:
    try:
        _, length, k = _static_topk(node)
    except _NotRewritable:
        return False
    return k < length


def _plan(match: Match) -> _Plan:
    axis, length, _ = _static_topk(match.node)
    k, slices_by_output = _first_k_slices(match.graph, match.node, axis, length)
    return _Plan(axis, length, k, slices_by_output)


def _static_topk(node: gs.Node) -> tuple[int, int, int]:
    """(axis, axis length, K) of a TopK; raises when K or the axis length is not known."""
    k = _constant_ints(node.inputs[1])
    if k is None or len(k) != 1:
        raise _NotRewritable("K is not a constant, even after constant folding")
    if node.inputs[0].shape is None:
        raise _NotRewritable("the rank of its input is unknown")
    length = _axis_length(node)
    if length is None:
        raise _NotRewritable(f"the length of axis {_axis(node)} is unknown, even after shape inference")
    return _axis(node), length, k[0]


def _axis(node: gs.Node) -> int:
    return _normalized_axis(int(node.attrs.get("axis", -1)), len(node.inputs[0].shape))


def _axis_length(node: gs.Node) -> int | None:
    """The static length of the TopK axis, None when the input's shape does not tell."""
    shape = node.inputs[0].shape
    if shape is None:
        return None
    axis = _axis(node)
    length = shape[axis] if 0 <= axis < len(shape) else None
    return length if isinstance(length, int) else None


def _first_k_slices(
    graph: gs.Graph, node: gs.Node, axis: int, length: int
) -> tuple[int, dict[int, list[gs.Node]]]:
    """The common k and, per TopK output index, the Slice nodes that keep its first k entries."""
    slices_by_output: dict[int, list[gs.Node]] = {}
    ks = set()
    for index, tensor in enumerate(node.outputs):
        if tensor in graph.outputs:
            raise _NotRewritable(f"output {tensor.name} is a graph output, used without slicing")
        for consumer in tensor.outputs:
            ks.add(_slice_first_k(consumer, tensor, axis, length))
            slices_by_output.setdefault(index, []).append(consumer)
    if not ks:
        raise _NotRewritable("none of its outputs is used")
    if len(ks) > 1:
        raise _NotRewritable(f"its outputs are sliced to different lengths {sorted(ks)}")
    return ks.pop(), slices_by_output


def _slice_first_k(consumer: gs.Node, tensor: gs.Tensor, axis: int, length: int) -> int:
    """k if ``consumer`` is a Slice of ``tensor`` keeping its first k < length entries on ``axis``."""
    if consumer.op != "Slice" or consumer.inputs[0] is not tensor:
        raise _NotRewritable(f"{tensor.name} is used unsliced by {consumer.op} {consumer.name}")
    starts, ends, axes, steps = _slice_params(consumer)
    rank = len(tensor.shape) if tensor.shape is not None else None
    if axes is None:
        axes = list(range(len(starts)))
    if rank is None and any(a < 0 for a in axes):
        raise _NotRewritable(f"Slice {consumer.name}: negative axes on an input of unknown rank")
    if [_normalized_axis(a, rank) for a in axes] != [axis]:
        raise _NotRewritable(f"Slice {consumer.name} slices axes {axes}, not only the sort axis {axis}")
    if steps not in (None, [1]):
        raise _NotRewritable(f"Slice {consumer.name} has steps {steps}")
    start, end = _clamped_index(starts[0], length), _clamped_index(ends[0], length)
    if start != 0:
        raise _NotRewritable(f"Slice {consumer.name} starts at {starts[0]}, not 0")
    if end >= length:
        raise _NotRewritable(f"Slice {consumer.name} keeps all {length} entries (a real full sort)")
    if end == 0:
        raise _NotRewritable(f"Slice {consumer.name} keeps no entries")
    return end


def _slice_params(node: gs.Node) -> tuple[list[int], list[int], list[int] | None, list[int] | None]:
    """(starts, ends, axes, steps) of a Slice; axes/steps None when absent."""
    if "starts" in node.attrs:  # opset < 10: attributes, no steps
        return list(node.attrs["starts"]), list(node.attrs["ends"]), node.attrs.get("axes"), None
    starts, ends = _constant_ints(node.inputs[1]), _constant_ints(node.inputs[2])
    if starts is None or ends is None:
        raise _NotRewritable(f"Slice {node.name}: starts/ends are not constants")
    return starts, ends, _optional_slice_input(node, 3), _optional_slice_input(node, 4)


def _optional_slice_input(node: gs.Node, position: int) -> list[int] | None:
    if position >= len(node.inputs) or node.inputs[position].is_empty():
        return None
    values = _constant_ints(node.inputs[position])
    if values is None:
        raise _NotRewritable(f"Slice {node.name}: input {position} (axes/steps) is not a constant")
    return values


# --- the rewrite ------------------------------------------------------------------------------


def _replace_with_topk_k(graph: gs.Graph, match: Match, plan: _Plan) -> None:
    """Set K=k and sorted=1, and let the TopK output what its Slices output.

    An unused output keeps its tensor, with the axis length in its recorded shape set to k.
    """
    node = match.node
    k_name = _unique_tensor_name(graph, f"{match.label}_k")
    node.inputs[1] = gs.Constant(k_name, np.array([plan.k], dtype=np.int64))
    node.attrs["sorted"] = 1
    for index, unused in enumerate(node.outputs):
        if index not in plan.slices_by_output and unused.shape is not None:
            unused.shape = [plan.k if dim == plan.axis else size for dim, size in enumerate(unused.shape)]
    for index, slices in plan.slices_by_output.items():
        kept = slices[0].outputs[0]
        for duplicate_slice in slices[1:]:
            _reroute(graph, duplicate_slice, kept)
        slices[0].outputs.clear()
        node.outputs[index] = kept


def _reroute(graph: gs.Graph, slice_node: gs.Node, replacement: gs.Tensor) -> None:
    """Point every use of the Slice's output at ``replacement`` (via Identity for a graph output)."""
    duplicate = slice_node.outputs[0]
    slice_node.outputs.clear()
    for consumer in list(duplicate.outputs):
        for position, tensor in enumerate(consumer.inputs):
            if tensor is duplicate:
                consumer.inputs[position] = replacement
    if duplicate in graph.outputs:
        name = f"{slice_node.name}_identity"
        graph.nodes.append(gs.Node("Identity", name, inputs=[replacement], outputs=[duplicate]))


# --- small helpers ----------------------------------------------------------------------------


def _constant_ints(tensor: gs.Tensor) -> list[int] | None:
    if not isinstance(tensor, gs.Constant):
        return None
    return [int(v) for v in np.asarray(tensor.values).reshape(-1)]


def _normalized_axis(axis: int, rank: int | None) -> int:
    return axis + rank if axis < 0 and rank is not None else axis


def _clamped_index(index: int, length: int) -> int:
    """Slice semantics: negative counts from the end; the result is clipped to [0, length]."""
    if index < 0:
        index += length
    return min(max(index, 0), length)


def _unique_tensor_name(graph: gs.Graph, base: str) -> str:
    taken = graph.tensors()
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    return name

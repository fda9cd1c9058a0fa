"""Rewrite ONNX graphs from other token-pruning codebases so they pass the op audit.

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

``rewrite_onnx`` folds constants first (so K computed from Shape -> Gather chains becomes a
constant), applies the rewrite, folds again, re-runs the audit and compares ONNX Runtime
outputs before and after at two batch sizes. The output model and a ``.rewrite.json`` report
beside it are only written once the outputs match.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from vitdeploy.errors import VitDeployError
from vitdeploy.export.allowlists import allowed_ops
from vitdeploy.export.check import AuditReport, audit, model_opset, ort_session
from vitdeploy.io import atomic_path, write_json_atomic

#: Batch sizes of the before/after parity check (neither is the usual export batch of 2).
PARITY_BATCH_SIZES = (1, 3)
#: Batch sizes used to probe shapes that symbolic shape inference leaves unknown.
SHAPE_PROBE_BATCH_SIZES = (2, 3)
REPORT_SUFFIX = ".rewrite.json"

_FLOAT_INPUT_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
}


@dataclass
class OutputParity:
    """ONNX Runtime outputs of the rewritten model against the original, on the same inputs."""

    batch_sizes: list[int]
    max_abs_diff: float
    atol: float
    mismatched_outputs: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol and not self.mismatched_outputs

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class RewriteReport:
    input: str
    output: str
    target: str
    applied: list[dict]
    skipped: list[dict]
    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]
    audit: AuditReport
    parity: OutputParity

    def to_dict(self) -> dict:
        return {
            "input": self.input,
            "output": self.output,
            "target": self.target,
            "applied": self.applied,
            "skipped": self.skipped,
            "op_counts_before": self.op_counts_before,
            "op_counts_after": self.op_counts_after,
            "audit": self.audit.to_dict(),
            "parity": self.parity.to_dict(),
        }


@dataclass
class _InputSpec:
    name: str
    dims: list[int | None]  # None marks the symbolic batch dim
    dtype: type

    def shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if dim is None else dim for dim in self.dims)


class _NotRewritable(Exception):
    """Why a full-sort TopK is left as it is (the message goes into the report)."""


def report_path(out_path: str | Path) -> Path:
    """Where ``rewrite_onnx`` writes its JSON report: OUT with the suffix ``.rewrite.json``."""
    return Path(out_path).with_suffix(REPORT_SUFFIX)


def rewrite_onnx(
    in_path: str | Path,
    out_path: str | Path,
    target: str = "onnxruntime",
    atol: float = 1e-4,
) -> RewriteReport:
    """Fold constants, turn argsort+slice into TopK(k), audit, check parity, write OUT.

    Raises ``VitDeployError`` (and writes nothing) when the input cannot be read, when its
    inputs cannot be generated, when the rewritten graph fails the ONNX checker, or when its
    outputs differ from the original's.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    original = load_onnx(in_path)
    allowed_ops(target, model_opset(original))  # fail early on an unknown target
    specs = _input_specs(original)
    graph = _folded_graph_with_shapes(original, specs)
    applied, skipped = fold_argsort_topk(graph)
    _fold(graph)
    rewritten = gs.export_onnx(graph)
    _check_rewritten(rewritten)
    audit_report = audit(rewritten, target)
    with atomic_path(out_path, suffix=".onnx") as tmp:
        onnx.save(rewritten, str(tmp))
        parity_report = _compare_outputs(in_path, tmp, specs, atol)
        if not parity_report.passed:
            raise VitDeployError(
                f"{in_path}: the rewritten model's outputs differ from the original "
                f"(max abs diff {parity_report.max_abs_diff:.3g} with atol {atol:g}; outputs with a "
                f"different shape, NaNs or other integers: {parity_report.mismatched_outputs or 'none'}); "
                "nothing was written"
            )
    report = RewriteReport(
        str(in_path), str(out_path), target, applied, skipped,
        _op_counts(original), _op_counts(rewritten), audit_report, parity_report,
    )
    write_json_atomic(report_path(out_path), report.to_dict())
    return report


def fold_argsort_topk(graph: gs.Graph) -> tuple[list[dict], list[dict]]:
    """Replace every full-sort TopK whose outputs are only used sliced to the first k by TopK(k).

    Pure graph pass (no folding, no cleanup): K must already be a ``gs.Constant`` and the
    TopK input's shape must give the axis length. Returns ``(applied, skipped)``: one dict per
    rewritten node (node, axis, largest, old_k, new_k, slices) and one per full-sort TopK left
    alone (node, reason). TopKs with K below their axis length are neither.
    """
    applied, skipped = [], []
    for node in [n for n in graph.nodes if n.op == "TopK"]:
        label = node.name or node.outputs[0].name
        try:
            sort = _full_sort(node)
            if sort is None:
                continue
            axis, length = sort
            k, slices_by_output = _first_k_slices(graph, node, axis, length)
        except _NotRewritable as reason:
            skipped.append({"node": label, "reason": str(reason)})
            continue
        _replace_with_topk_k(graph, node, axis, k, slices_by_output)
        applied.append({
            "node": label,
            "axis": axis,
            "largest": int(node.attrs.get("largest", 1)),
            "old_k": length,
            "new_k": k,
            "slices": [s.name for slices in slices_by_output.values() for s in slices],
        })
    return applied, skipped


# --- the graph pass --------------------------------------------------------------------------


def _full_sort(node: gs.Node) -> tuple[int, int] | None:
    """(axis, axis length) if the TopK sorts its whole axis, None if it is a genuine top-k."""
    k = _constant_ints(node.inputs[1])
    if k is None or len(k) != 1:
        raise _NotRewritable("K is not a constant, even after constant folding")
    shape = node.inputs[0].shape
    if shape is None:
        raise _NotRewritable("the rank of its input is unknown")
    axis = _normalized_axis(int(node.attrs.get("axis", -1)), len(shape))
    length = shape[axis] if 0 <= axis < len(shape) else None
    if not isinstance(length, int):
        raise _NotRewritable(f"the length of axis {axis} is unknown, even after shape inference")
    return (axis, length) if k[0] >= length else None


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


def _replace_with_topk_k(
    graph: gs.Graph, node: gs.Node, axis: int, k: int, slices_by_output: dict[int, list[gs.Node]]
) -> None:
    """Set K=k and sorted=1, and let the TopK output what its Slices output.

    An unused output keeps its tensor, with the axis length in its recorded shape set to k.
    """
    k_name = _unique_tensor_name(graph, f"{node.name or node.outputs[0].name}_k")
    node.inputs[1] = gs.Constant(k_name, np.array([k], dtype=np.int64))
    node.attrs["sorted"] = 1
    for index, unused in enumerate(node.outputs):
        if index not in slices_by_output and unused.shape is not None:
            unused.shape = [k if dim == axis else size for dim, size in enumerate(unused.shape)]
    for index, slices in slices_by_output.items():
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


# --- loading, folding and shapes -------------------------------------------------------------


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read an ONNX file; a missing or unreadable file raises ``VitDeployError``."""
    if not path.is_file():
        raise VitDeployError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, onnx may raise others
        raise VitDeployError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def _input_specs(model: onnx.ModelProto) -> list[_InputSpec]:
    """Graph inputs (initializers excluded); the leading dim may be symbolic, nothing else."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in _FLOAT_INPUT_TYPES:
            elem_type = tensor_type.elem_type
            kind = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "not a tensor"
            raise VitDeployError(
                f"input {value.name!r} is {kind}; only float inputs can be generated for the parity check"
            )
        if not tensor_type.HasField("shape"):
            raise VitDeployError(f"input {value.name!r} has no shape; re-export with static non-batch dims")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if None in dims[1:]:
            raise VitDeployError(
                f"input {value.name!r} has shape {_dims_text(tensor_type.shape)}: only the batch (first) dim "
                "may be symbolic; re-export with the other dims static"
            )
        specs.append(_InputSpec(value.name, dims, _FLOAT_INPUT_TYPES[tensor_type.elem_type]))
    return specs


def _dims_text(shape: onnx.TensorShapeProto) -> str:
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]
    return "[" + ", ".join(dims) + "]"


def _folded_graph_with_shapes(model: onnx.ModelProto, specs: list[_InputSpec]) -> gs.Graph:
    """Fold constants with symbolic shapes; then, where a TopK axis length is still unknown,
    take it from shape inference at two concrete batch sizes, and fold again."""
    graph = _fold_until_stable(_import_with_shapes(model))
    if _fill_unknown_topk_shapes(graph, model, specs):
        graph = _fold_until_stable(graph)
    return graph


def _fold_until_stable(graph: gs.Graph) -> gs.Graph:
    """Alternate constant folding and shape inference until no more nodes fold.

    One round is not enough for stacked pruning stages: folding stage 1 (e.g. its Expand
    target shape) is what lets inference find the shapes, and so fold the K, of stage 2.
    """
    while True:
        node_count = len(graph.nodes)
        _fold(graph)
        graph = _import_with_shapes(gs.export_onnx(graph))
        if len(graph.nodes) == node_count:
            return graph


def _import_with_shapes(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(onnx.shape_inference.infer_shapes(model, data_prop=True))


def _fold(graph: gs.Graph) -> None:
    graph.toposort()
    graph.fold_constants()
    graph.cleanup().toposort()


def _fill_unknown_topk_shapes(graph: gs.Graph, model: onnx.ModelProto, specs: list[_InputSpec]) -> bool:
    """Set TopK input shapes whose axis length is unknown from batch-pinned probes.

    Dims that agree across the probe batch sizes are taken as static; the others stay unknown.
    Returns whether any shape was filled in.
    """
    unknown = [n.inputs[0] for n in graph.nodes if n.op == "TopK" and not _axis_length_known(n)]
    if not unknown:
        return False
    probes = [_shapes_at_batch(model, specs, batch) for batch in SHAPE_PROBE_BATCH_SIZES]
    filled = False
    for tensor in unknown:
        shapes = [probe.get(tensor.name) for probe in probes]
        if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
            continue
        tensor.shape = [a if a == b and isinstance(a, int) else None for a, b in zip(*shapes)]
        filled = True
    return filled


def _axis_length_known(node: gs.Node) -> bool:
    shape = node.inputs[0].shape
    if shape is None:
        return False
    axis = _normalized_axis(int(node.attrs.get("axis", -1)), len(shape))
    return 0 <= axis < len(shape) and isinstance(shape[axis], int)


def _shapes_at_batch(model: onnx.ModelProto, specs: list[_InputSpec], batch: int) -> dict[str, list]:
    """Tensor shapes after pinning every input's batch dim to ``batch``, folding and inferring."""
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    by_name = {spec.name: spec for spec in specs}
    for value in pinned.graph.input:
        if value.name in by_name:
            for dim, size in zip(value.type.tensor_type.shape.dim, by_name[value.name].shape(batch)):
                dim.dim_value = size
    graph = _fold_until_stable(_import_with_shapes(pinned))
    return {name: tensor.shape for name, tensor in graph.tensors().items() if tensor.shape is not None}


# --- checks ----------------------------------------------------------------------------------


def _check_rewritten(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first_line = str(exc).splitlines()[0]
        raise VitDeployError(f"the rewritten graph fails the ONNX checker: {first_line}") from None


def _compare_outputs(
    before_path: Path, after_path: Path, specs: list[_InputSpec], atol: float, seed: int = 0
) -> OutputParity:
    """Run both models on the same random inputs; float outputs by max |diff|, others exactly."""
    before, after = ort_session(before_path), ort_session(after_path)
    names = [output.name for output in before.get_outputs()]
    rng = np.random.default_rng(seed)
    worst, mismatched = 0.0, set()
    for batch in PARITY_BATCH_SIZES:
        feed = {spec.name: rng.standard_normal(spec.shape(batch)).astype(spec.dtype) for spec in specs}
        for name, want, got in zip(names, before.run(names, feed), after.run(names, feed)):
            if want.shape != got.shape:
                mismatched.add(name)
            elif np.issubdtype(want.dtype, np.floating):
                diff = float(np.abs(want.astype(np.float64) - got).max(initial=0.0))
                if np.isnan(diff):
                    mismatched.add(name)
                else:
                    worst = max(worst, diff)
            elif not np.array_equal(want, got):
                mismatched.add(name)
    return OutputParity(list(PARITY_BATCH_SIZES), worst, atol, sorted(mismatched))


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))

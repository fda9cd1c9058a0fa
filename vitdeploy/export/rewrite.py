"""Rewrite ONNX graphs from other token-pruning codebases so they pass the op audit.

``rewrite_onnx`` folds constants (so e.g. a K computed from Shape -> Gather chains becomes a
constant), applies the rewrite rules of ``vitdeploy.export.rules`` (all of them, or those
named), folds again, re-runs the audit and compares ONNX Runtime outputs before and after at
two batch sizes. The output model and a ``.rewrite.json`` report beside it are only written
once the outputs match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from vitdeploy.errors import VitDeployError
from vitdeploy.export.allowlists import allowed_ops
from vitdeploy.export import check
from vitdeploy.export.check import AuditReport, audit, model_opset, ort_session
from vitdeploy.export.rules import RULES, RewriteRule
from vitdeploy.io import atomic_paths, finite_json

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
    rules: list[str]
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
            "rules": self.rules,
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


def report_path(out_path: str | Path) -> Path:
    """Where ``rewrite_onnx`` writes its JSON report: OUT with the suffix ``.rewrite.json``."""
    return Path(out_path).with_suffix(REPORT_SUFFIX)


def rewrite_onnx(
    in_path: str | Path,
    out_path: str | Path,
    target: str = "onnxruntime",
    atol: float = 1e-4,
    rule_names: list[str] | None = None,
) -> RewriteReport:
    """Fold constants, apply the rewrite rules (all, or those named), audit, check parity, write OUT.

    Raises ``VitDeployError`` (and writes nothing) when a rule name is unknown, when the input
    cannot be read, when its inputs cannot be generated, when the rewritten graph fails the
    ONNX checker, or when its outputs differ from the original's.
    """
    rules = list(RULES.items().values()) if rule_names is None else [RULES.get(n) for n in dict.fromkeys(rule_names)]
    in_path, out_path = Path(in_path), Path(out_path)
    original = load_onnx(in_path)
    allowed_ops(target, model_opset(original))  # fail early on an unknown target
    specs = _input_specs(original)
    graph = _folded_graph_with_shapes(original, specs, rules)
    applied, skipped = apply_rules(graph, rules)
    _fold(graph)
    rewritten = gs.export_onnx(graph)
    _check_rewritten(rewritten)
    audit_report = audit(rewritten, target)
    with atomic_paths(out_path, report_path(out_path), suffixes=(".onnx", ".json")) as (tmp, report_tmp):
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
            str(in_path), str(out_path), target, [rule.name for rule in rules], applied, skipped,
            check.op_counts(original.graph.node), check.op_counts(rewritten.graph.node), audit_report,
            parity_report,
        )
        report_tmp.write_text(finite_json(report.to_dict(), str(report_path(out_path))))
    return report


def apply_rules(graph: gs.Graph, rules: list[RewriteRule]) -> tuple[list[dict], list[dict]]:
    """Apply each rule, in order, to every match it finds and ``check`` passes, in place.

    Pure graph pass (no folding, no cleanup). ``check`` runs just before each ``apply``, so it
    sees the graph as the earlier rewrites left it. Returns ``(applied, skipped)``: one dict
    per rewrite (rule, node and the rule's details) and one per match left alone (rule, node,
    reason).
    """
    applied, skipped = [], []
    for rule in rules:
        for match in rule.match(graph):
            entry = {"rule": rule.name, "node": match.label}
            reason = rule.check(match)
            if reason is None:
                applied.append({**entry, **rule.apply(graph, match)})
            else:
                skipped.append({**entry, "reason": reason})
    return applied, skipped


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


def _folded_graph_with_shapes(
    model: onnx.ModelProto, specs: list[_InputSpec], rules: list[RewriteRule]
) -> gs.Graph:
    """Fold constants with symbolic shapes; then, where a shape the rules need is still unknown,
    take it from shape inference at two concrete batch sizes, and fold again."""
    graph = _fold_until_stable(_import_with_shapes(model))
    unknown = {tensor.name: tensor for rule in rules for tensor in rule.unknown_shapes(graph)}
    if _fill_unknown_shapes(list(unknown.values()), model, specs):
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


def _fill_unknown_shapes(unknown: list[gs.Tensor], model: onnx.ModelProto, specs: list[_InputSpec]) -> bool:
    """Set the shapes of ``unknown`` tensors from batch-pinned probes.

    Dims that agree across the probe batch sizes are taken as static; the others stay unknown.
    Returns whether any shape was filled in.
    """
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

"""Checks run after every export or rewrite: ONNX checker, op audit, ONNX Runtime parity.

The op audit enforces the rule that exported graphs never sort. ``argsort`` exports as a TopK
whose k equals the length of the axis, so any such TopK fails the audit, as does a TopK whose k
is not a constant or whose axis length is unknown. It also fails on ops outside the target's
allowlist (``allowlists.py``): standard ops, plus the few ONNX Runtime contrib ops that the
fusion passes may write, for target onnxruntime only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import math

import numpy as np
import onnx
from onnx import numpy_helper

from vitdeploy.errors import VitDeployError
from vitdeploy.export.allowlists import TENSORRT_TOPK_MAX_K, allowed_contrib_ops, allowed_ops

ORT_THREADS = 2


@dataclass
class TopKInfo:
    node: str
    k: int | None
    axis_length: int | str | None


@dataclass
class AuditReport:
    target: str
    opset: int
    op_counts: dict[str, int]
    topk: list[TopKInfo]
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ParityReport:
    batch_sizes: list[int]
    max_abs_diff: float
    atol: float
    top1_agreement: float
    inputs: str = "random normal"

    @property
    def passed(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.atol

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_model(path: str | Path) -> None:
    """``onnx.checker`` in full mode (with strict shape inference)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VitDeployError(f"{path}: ONNX checker failed: {str(exc).splitlines()[0]}") from None


def model_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise VitDeployError("the ONNX model imports no default-domain (ai.onnx) opset")
    return versions[0]


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def op_counts(nodes) -> dict[str, int]:
    """Nodes by op type, ``domain:op`` for ops outside the standard domain; ``nodes`` are ONNX
    ``NodeProto``s (e.g. ``model.graph.node``) or an ``onnx_ir`` graph."""
    return dict(Counter(op if domain in ("", "ai.onnx") else f"{domain}:{op}"
                        for domain, op in ((node.domain, node.op_type) for node in nodes)))


def audit(model: onnx.ModelProto, target: str) -> AuditReport:
    """Op audit: every op in the target's allowlist, no TopK that is really a sort, Q/DQ the target runs."""
    opset = model_opset(model)
    allowed, contrib = allowed_ops(target, opset), allowed_contrib_ops(target)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = _value_shapes(inferred.graph)
    constants = _constant_values(inferred.graph)
    nodes = list(_all_nodes(inferred.graph))
    report = AuditReport(target, opset, op_counts(nodes), [])
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            if (node.domain, node.op_type) not in contrib:
                report.violations.append(f"{node.op_type} ({node.domain}) is a custom-domain op "
                                         f"not allowed for {target}")
        elif node.op_type not in allowed:
            report.violations.append(f"{node.op_type} is not supported by {target} at opset {opset}")
        if node.op_type == "TopK":
            info = _topk_info(node, shapes, constants)
            report.topk.append(info)
            report.violations.extend(_topk_violations(info, target))
    report.violations.extend(qdq_violations(inferred, target, constants))
    return report


def restricts_qdq(target: str) -> bool:
    """Whether ``target`` runs only some forms of Q/DQ (TensorRT); ONNX Runtime runs every form."""
    return target == "tensorrt"


def qdq_violations(model: onnx.ModelProto, target: str, constants: dict | None = None) -> list[str]:
    """Why ``target`` cannot run the model's Q/DQ nodes."""
    if not restricts_qdq(target):
        return []
    constants = _constant_values(model.graph) if constants is None else constants
    return [problem for node in _all_nodes(model.graph) if node.op_type in QDQ_OPS
            for problem in _tensorrt_qdq_violations(node, constants)]


def parity(
    onnx_path: str | Path,
    reference: Callable[[np.ndarray], np.ndarray],
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 3),
    atol: float = 1e-4,
    seed: int = 0,
    images: np.ndarray | None = None,
    images_name: str = "images",
    optimized_model_path: str | Path | None = None,
) -> ParityReport:
    """Max |ONNX Runtime − reference| at several batch sizes, on random inputs or on the first
    ``images`` (at least as many as the largest batch).

    ``input_shape`` excludes the batch axis; using batch sizes other than the one the model was
    exported with also proves the batch axis is really dynamic. ``optimized_model_path``: where
    the session saves the graph ONNX Runtime optimised (for the fusion report).
    """
    session = ort_session(onnx_path, optimized_model_path)
    rng = np.random.default_rng(seed)
    worst, agree, total = 0.0, 0, 0
    for batch in batch_sizes:
        x = images[:batch] if images is not None else rng.standard_normal((batch, *input_shape)).astype(np.float32)
        got = run_session(session, x)
        want = reference(x)
        finite = np.isfinite(got).all() and np.isfinite(want).all()
        worst = max(worst, float(np.abs(got - want).max()) if finite else math.inf)
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += batch
    return ParityReport(list(batch_sizes), worst, atol, agree / total,
                        "random normal" if images is None else images_name)


def ort_session(onnx_path: str | Path, optimized_model_path: str | Path | None = None):
    """A CPU session as the ONNX Runtime backend opens it, on ``ORT_THREADS`` threads."""
    from vitdeploy.export.ort_session import open_session

    return open_session(onnx_path, ORT_THREADS, optimized_model_path=optimized_model_path)


def run_session(session, x: np.ndarray) -> np.ndarray:
    """Run a single-input, single-output session."""
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _value_shapes(graph: onnx.GraphProto) -> dict[str, list[int | str | None]]:
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tensor_type.shape.dim
            ]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _tensorrt_qdq_violations(node: onnx.NodeProto, constants: dict) -> list[str]:
    """TensorRT parses only symmetric, signed INT8 Q/DQ: every zero point a constant int8 zero
    (onnx-tensorrt asserts "TRT only supports symmetric quantization - zeroPt must be all zeros")."""
    zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero_point is None:
        missing = len(node.input) > 2 and node.input[2]
        return [f"{node.op_type} {node.name}: its zero point is not a constant"] if missing else []
    if zero_point.dtype != np.int8 or np.any(zero_point != 0):
        return [f"{node.op_type} {node.name}: TensorRT runs only symmetric INT8 quantization (zero point 0, "
                f"int8), this one is {zero_point.dtype} with zero points {sorted(set(zero_point.ravel().tolist()))[:3]}"]
    return []


def _topk_info(node: onnx.NodeProto, shapes: dict, constants: dict) -> TopKInfo:
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    k_value = constants.get(node.input[1]) if len(node.input) > 1 else None
    k = int(np.asarray(k_value).reshape(-1)[0]) if k_value is not None else None
    shape = shapes.get(node.input[0])
    axis_length = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
    return TopKInfo(node.name or node.output[0], k, axis_length)


def _topk_violations(info: TopKInfo, target: str) -> list[str]:
    if info.k is None:
        return [f"TopK {info.node}: k is not a constant (token counts must be static)"]
    if not isinstance(info.axis_length, int) or info.axis_length == 0:
        return [f"TopK {info.node}: the length of its axis is unknown, so it may be a full sort"]
    problems = []
    if info.k >= info.axis_length:
        problems.append(f"TopK {info.node}: k={info.k} equals its axis length, i.e. a full sort (argsort)")
    if target == "tensorrt" and info.k > TENSORRT_TOPK_MAX_K:
        problems.append(f"TopK {info.node}: k={info.k} exceeds TensorRT's limit of {TENSORRT_TOPK_MAX_K}")
    return problems

"""Which ONNX nodes form which quantizable part of a ViT (``config.PARTS``), read from the module
scopes the exporter records on every node (``pkg.torch.onnx.name_scopes``)."""

from __future__ import annotations

import re

import onnx

from vitdeploy.errors import VitDeployError

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
PART_SCOPES = {
    "linear": re.compile(r"^(blocks\.\d+\.)?(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)$"),
    "attention": re.compile(r"^scaled_dot_product_attention(_\d+)?$"),
    "patch-embed": re.compile(r"^patch_embed\.proj$"),
    "head": re.compile(r"^head(_dist)?$"),
}
"""A node's module scope (the innermost two: module path, then op) → the part it belongs to (see
``config.PARTS``). A block's layers may also sit at the top (a latency table's block parts)."""
PART_OPS = {"linear": ("MatMul", "Gemm"), "attention": ("MatMul",), "patch-embed": ("Conv",),
            "head": ("MatMul", "Gemm")}


def nodes_by_part(model: onnx.ModelProto, parts: tuple[str, ...], required: bool = True) -> dict[str, list[str]]:
    """Names of the nodes that ``parts`` cover, per part; if ``required``, refused when none is found."""
    weights = {init.name for init in model.graph.initializer}
    found: dict[str, list[str]] = {part: [] for part in parts}
    for node in model.graph.node:
        part = _part_of(node, parts)
        multiplies_a_weight = bool(weights.intersection(node.input[:2]))
        if part is not None and multiplies_a_weight == (part != "attention"):  # attention: two activations
            found[part].append(node.name)
    if required and not any(found.values()):
        raise VitDeployError(f"nothing to quantize: the model has no {', '.join(parts)} nodes")
    return found


def module_of(node: onnx.NodeProto) -> str:
    """The block Linear (``blocks.3.mlp.fc1``) a node of the ``linear`` part was exported from."""
    return next(scope for scope in reversed(_innermost_scopes(node)) if PART_SCOPES["linear"].match(scope))


def _part_of(node: onnx.NodeProto, parts: tuple[str, ...]) -> str | None:
    innermost = _innermost_scopes(node)
    for part in parts:
        if node.op_type in PART_OPS[part] and any(PART_SCOPES[part].match(scope) for scope in innermost):
            return part
    return None


def _innermost_scopes(node: onnx.NodeProto) -> list[str]:
    """The innermost two of the module scopes the exporter recorded on ``node`` (module path, then op)."""
    scopes = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), "")
    return [scope for scope in re.findall(r"'([^']*)'", scopes) if scope][-2:]

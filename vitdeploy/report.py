"""Reports of `vitdeploy inspect` and `vitdeploy export`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vitdeploy.models.flops import macs_report
from vitdeploy.tables import format_table, millions

if TYPE_CHECKING:
    from vitdeploy.models.vit import ViT


def inspect_report(model: ViT) -> dict:
    spec = model.spec
    macs = macs_report(spec)
    blocks = []
    for i, (block, block_macs) in enumerate(zip(spec.blocks, macs["blocks"]), start=1):
        blocks.append({
            "block": i, "heads": block.heads, "qk_dim": block.qk_dim, "v_dim": block.v_dim,
            "mlp_dim": block.mlp_dim, "tokens_in": block_macs["tokens"], "keep": block.tokens.keep,
            "selector": block.tokens.selector, "package": block.tokens.package, "macs": block_macs["total"],
        })
    return {
        "name": spec.name,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": macs["total"],
        "patch_embed_macs": macs["patch_embed"],
        "head_macs": macs["head"],
        "blocks": blocks,
        "spec": spec.to_dict(),
    }


def inspect_table(report: dict) -> str:
    spec = report["spec"]
    header = (f"{report['name']}: {spec['img_size']}px, patch {spec['patch_size']}, embed {spec['embed_dim']}, "
              f"{len(report['blocks'])} blocks, {spec['num_classes']} classes{_traits(spec)}\n"
              f"params {millions(report['params'])}, MACs {millions(report['macs'])} "
              f"(patch embed {millions(report['patch_embed_macs'])}, head {millions(report['head_macs'])})")
    rows = [
        [b["block"], b["heads"], b["qk_dim"], b["v_dim"], b["mlp_dim"], b["tokens_in"],
         "" if b["keep"] is None else f"{b['keep']} ({b['selector']}{', +package' if b['package'] else ''})",
         millions(b["macs"])]
        for b in report["blocks"]
    ]
    table = format_table(["block", "heads", "qk/head", "v/head", "mlp", "tokens in", "keep after", "MACs"], rows)
    return header + "\n\n" + table


def _traits(spec: dict) -> str:
    """What sets the spec apart from a plain DeiT: distillation, activation, sparsity."""
    traits = []
    if spec["distilled"]:
        traits.append("distilled" if spec.get("dist_head", True) else "distillation token without its head")
    if spec.get("activation", "gelu") != "gelu":
        traits.append(spec["activation"])
    if spec["sparsity"]:
        traits.append(f"sparsity {spec['sparsity']}")
    return "".join(f", {trait}" for trait in traits)


def export_summary(report: dict, json_path: Path) -> str:
    audit, parity = report["audit"], report["parity"]
    topk = ", ".join(f"k={t['k']}/{t['axis_length']}" for t in audit["topk"]) or "none"
    return "\n".join([
        f"wrote {report['onnx']} in {report['export_seconds']:.1f} s (opset {report['config']['opset']}, "
        f"selection {report['config']['selection']}, target {report['config']['target']})",
        "checker: passed",
        f"op audit: {'passed' if audit['passed'] else 'FAILED'} ({sum(audit['op_counts'].values())} nodes; TopK {topk})",
        _fusion_line(report["fusion"]),
        f"parity vs PyTorch: max abs diff {parity['max_abs_diff']:.2e} ≤ {parity['atol']:.0e} at batch "
        f"{', '.join(map(str, parity['batch_sizes']))} ({parity.get('inputs', 'random normal')})",
        f"report: {json_path}",
    ])


def _fusion_line(fusion: dict) -> str:
    nodes, passes = fusion["nodes"], fusion["passes"]
    return (f"fusion: {nodes['exported']} → {nodes['written']} nodes written → {nodes['onnxruntime']} as ONNX Runtime "
            f"runs it ({', '.join(f'{name} {count}' for name, count in passes.items())})")

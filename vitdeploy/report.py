"""Plain-text tables and JSON-ready reports for the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vitdeploy.models.flops import macs_report
from vitdeploy.models.vit import ViT
from vitdeploy.prune.spvit_config import FLAT_SCORES


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table (readable in a terminal, pasteable into a README)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


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
              f"{len(report['blocks'])} blocks, {spec['num_classes']} classes"
              f"{', distilled' if spec['distilled'] else ''}{', sparsity ' + spec['sparsity'] if spec['sparsity'] else ''}\n"
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


def export_summary(report: dict, json_path: Path) -> str:
    audit, parity = report["audit"], report["parity"]
    topk = ", ".join(f"k={t['k']}/{t['axis_length']}" for t in audit["topk"]) or "none"
    return "\n".join([
        f"wrote {report['onnx']} in {report['export_seconds']:.1f} s (opset {report['config']['opset']}, "
        f"selection {report['config']['selection']}, target {report['config']['target']})",
        "checker: passed",
        f"op audit: {'passed' if audit['passed'] else 'FAILED'} ({sum(audit['op_counts'].values())} nodes; TopK {topk})",
        f"parity vs PyTorch: max abs diff {parity['max_abs_diff']:.2e} ≤ {parity['atol']:.0e} at batch "
        f"{', '.join(map(str, parity['batch_sizes']))} ({parity.get('inputs', 'random normal')})",
        f"report: {json_path}",
    ])


def prune_summary(report: dict, out: str) -> str:
    """Per-block patch tokens of a token-pruning report, then FLOPs and accuracy."""
    lines = _token_plan_lines(report)
    if "adaptive_flops_ratio" in report:
        lines.append(f"a-STAR mean FLOPs over the evaluated images: {report['adaptive_flops_ratio']:.3f}x "
                     "(the static counts above are upper bounds)")
    if "top1" in report:
        lines.append(f"top-1 {report['top1']:.4f} (unpruned {report['baseline_top1']:.4f})")
    lines.append(f"saved {out} (calibration {report['calibration_seconds']:.1f} s)")
    return "\n".join(lines)


def spvit_summary(report: dict, out: str) -> str:
    lines = _token_plan_lines(report)
    lines.append(f"validation top-1 {report['top1']:.4f} at the best epoch ({report['best_epoch']}; unpruned "
                 f"{report['teacher_top1']:.4f})")
    if "test_top1" in report:
        lines.append(f"test top-1 {report['test_top1']:.4f}")
    for phase in report["phases"]:
        if phase["score_spread"] < FLAT_SCORES:
            lines.append(f"warning: the selector after block {phase['after_block']} scores all tokens alike "
                         f"(spread {phase['score_spread']:.1e}): rounding noise decides its top-k, and the export's "
                         "parity check may fail. Train again (another --seed, --lr-selector or --lambda-ratio).")
    lines.append(f"saved {out}")
    return "\n".join(lines)


def _token_plan_lines(report: dict) -> list[str]:
    rows = [(i, n, keep if keep is not None else "") for i, (n, keep) in
            enumerate(zip(report["patch_tokens_entering"], report["keep"]), start=1)]
    return [format_table(["block", "patch tokens in", "keep after"], rows),
            f"{report['method']}: FLOPs {report['flops_ratio']:.3f}x of the unpruned model "
            f"({report['macs'] / 1e6:.1f} / {report['baseline_macs'] / 1e6:.1f} MMACs)"]


def nvit_summary(report: dict, out: str) -> str:
    """Per-block dims before → after of an NViT report, then params, MACs and accuracy."""
    before, after = report["dims"]["before"], report["dims"]["after"]
    rows = [(i, _dims(b), _dims(a)) for i, (b, a) in enumerate(zip(before["blocks"], after["blocks"]), start=1)]
    lines = [f"embed dim {before['embed_dim']} → {after['embed_dim']}",
             format_table(["block", "before: heads×qk/v, mlp", "after"], rows),
             f"params {report['params']['ratio']:.3f}×, MACs {report['macs']['ratio']:.3f}× "
             f"(compaction max abs diff {report['compaction_max_abs_diff']:.1e})"]
    lines += _accuracy_lines(report.get("accuracy", {}))
    lines.append(f"saved {out}")
    return "\n".join(lines)


def sparse24_summary(report: dict, out: str) -> str:
    lines = [f"2:4 on {report['layers']} block Linears: {report['zeroed']} of {report['weights']} weights zeroed, "
             f"pattern verified: {report['verified_after']}"]
    lines += _accuracy_lines(report.get("accuracy", {}))
    lines.append(f"saved {out}")
    return "\n".join(lines)


def _dims(block: dict) -> str:
    return f"{block['heads']}×{block['qk_dim']}/{block['v_dim']}, {block['mlp_dim']}"


def _accuracy_lines(accuracy: dict) -> list[str]:
    return [f"top-1 {' → '.join(f'{name} {value:.4f}' for name, value in accuracy.items())}"] if accuracy else []

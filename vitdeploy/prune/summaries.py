"""How each pruning method's report prints (a light module: the CLI loads it for every method)."""

from __future__ import annotations

from vitdeploy.prune.spvit_config import FLAT_SCORES
from vitdeploy.tables import format_table


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
    if "latency" in report:
        lines.append(latency_line(report["latency"]))
    lines.append(f"saved {out}")
    return "\n".join(lines)


def latency_line(latency: dict) -> str:
    """A result's latency against its target and prediction (``vitdeploy.lut.measure.latency_check``)."""
    return (f"latency (measured interleaved with the unpruned model): {latency['measured_ms']:.2f} ms, "
            f"{latency['speedup']:.2f}x faster; predicted {latency['predicted_ms']:.2f} ms (off by "
            f"{latency['prediction_error_pct']:.1f} %); target {latency['target_ms']:.2f} ms = "
            f"{latency['target_ratio']:.3f}x the unpruned latency, reached {latency['measured_ratio']:.3f}x "
            f"({latency['target_error_pct']:+.1f} %)" + _plans_made(latency.get("attempts", [])))


def _plans_made(attempts: list[dict]) -> str:
    if len(attempts) < 2:
        return ""
    return (f", after {len(attempts)} tries (a plan that measures over the target is made again for a goal "
            "corrected by the measurements)")


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

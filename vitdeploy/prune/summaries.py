"""How reports print: the token methods' summary and the parts other methods' summaries share (a light
module: the CLI loads it for every method)."""

from __future__ import annotations

from vitdeploy.tables import format_table


def prune_summary(report: dict, out: str) -> str:
    """Per-block patch tokens of a token-pruning report, then FLOPs and accuracy."""
    lines = token_plan_lines(report)
    if "adaptive_flops_ratio" in report:
        lines.append(f"a-STAR mean FLOPs over the evaluated images: {report['adaptive_flops_ratio']:.3f}x "
                     "(the static counts above are upper bounds)")
    if "top1" in report:
        lines.append(f"top-1 {report['top1']:.4f} (unpruned {report['baseline_top1']:.4f})")
    lines.append(f"saved {out} (calibration {report['calibration_seconds']:.1f} s)")
    return "\n".join(lines)


def token_plan_lines(report: dict) -> list[str]:
    rows = [(i, n, keep if keep is not None else "") for i, (n, keep) in
            enumerate(zip(report["patch_tokens_entering"], report["keep"]), start=1)]
    return [format_table(["block", "patch tokens in", "keep after"], rows),
            f"{report['method']}: FLOPs {report['flops_ratio']:.3f}x of the unpruned model "
            f"({report['macs'] / 1e6:.1f} / {report['baseline_macs'] / 1e6:.1f} MMACs)"]


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


def accuracy_lines(accuracy: dict) -> list[str]:
    return [f"top-1 {' → '.join(f'{name} {value:.4f}' for name, value in accuracy.items())}"] if accuracy else []

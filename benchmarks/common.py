"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this imports as ``common``)."""

from __future__ import annotations

import io

from vitdeploy.report import format_table


def accuracy_flops_png(series: dict[str, list[tuple[float, float]]], baseline_top1: float, title: str) -> bytes:
    """Top-1 % against FLOPs ratio, one line per method; ``series`` maps a method to (ratio, top-1 %) points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, points in series.items():
        ax.plot(*zip(*sorted(points)), marker="o", label=method)
    ax.axhline(baseline_top1, color="gray", linestyle="--", label="unpruned")
    ax.set_xlabel("FLOPs (ratio of the unpruned model)")
    ax.set_ylabel("top-1 % (Fashion-MNIST test)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def speedup_table(rows: list[dict]) -> str:
    """Per model and batch of a ``BenchResult``: FLOPs ratio, FLOPs reduction and the measured
    throughput ratio to the first model (the baseline)."""
    base_macs = rows[0]["macs"]
    table = [[r["model"], r["batch"], f"{r['macs'] / base_macs:.3f}", f"{base_macs / r['macs']:.2f}×",
              f"{r['ratio_to_first']:.2f}×"] for r in rows if r["model"] != rows[0]["model"]]
    return format_table(["model", "batch", "FLOPs ratio", "FLOPs reduction", "measured speedup"], table)

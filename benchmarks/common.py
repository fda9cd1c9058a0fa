"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this imports as ``common``)."""

from __future__ import annotations

import io
from pathlib import Path

from vitdeploy.backends import ModelSource
from vitdeploy.export.reference import export_torchscript
from vitdeploy.tables import format_table


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
    return png_bytes(fig)


def accuracy_latency_png(series: dict[str, list[tuple[float, float]]], unpruned_top1: float, xlabel: str,
                         title: str, budgets: tuple[float, ...] = ()) -> bytes:
    """Top-1 % against measured latency (× the unpruned model's), one line per series of
    (ratio, top-1 %) points, the unpruned model as a star and dotted lines at ``budgets``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, points in series.items():
        ax.plot(*zip(*sorted(points)), marker="o", label=method)
    ax.scatter([1.0], [unpruned_top1], color="black", marker="*", s=80, label="unpruned")
    for share in budgets:
        ax.axvline(share, color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 % (Fashion-MNIST test)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def speedup_table(rows: list[dict]) -> str:
    """Per model and batch of a ``BenchResult``: FLOPs ratio, FLOPs reduction and the measured
    throughput ratio to the fastest baseline at that batch. The first model is vitdeploy's unpruned
    export; ``OTHER_EXPORTER_BASELINE``, when timed, is the same weights through torch's other exporter."""
    base_macs = rows[0]["macs"]
    baselines = (rows[0]["model"], OTHER_EXPORTER_BASELINE)
    fastest = {}
    for r in rows:
        if r["model"] in baselines:
            fastest[r["batch"]] = max(fastest.get(r["batch"], 0.0), r["throughput"])
    table = [[r["model"], r["batch"], f"{r['macs'] / base_macs:.3f}", f"{base_macs / r['macs']:.2f}×",
              f"{r['throughput'] / fastest[r['batch']]:.2f}×"] for r in rows if r["model"] not in baselines]
    return format_table(["model", "batch", "FLOPs ratio", "FLOPs reduction", "speedup vs fastest baseline"], table)


OTHER_EXPORTER_BASELINE = "baseline (torchscript export)"


def other_exporter_baseline(model, work_dir: Path) -> dict[str, ModelSource]:
    """``model`` (unpruned) through torch's TorchScript exporter, named for ``speedup_table``."""
    path = Path(work_dir) / "baseline-torchscript.onnx"
    export_torchscript(model, path)
    return {OTHER_EXPORTER_BASELINE: ModelSource(str(path), work_dir, model=model)}

"""How repeatable CPU timings are with 1 and 2 ONNX Runtime threads on this machine.

    .venv/bin/python benchmarks/thread_stability.py

fmnist_vit and 8 random pruned variants of it (``random_pruned_specs``, seed 0, the models a
``lut build --for`` calibrates on) at batch 64, timed interleaved in one run, three runs in a
row, once with 1 intra-op thread and once with 2. For each model: the spread of its median (and
10th percentile) over the three runs, max / min − 1. Writes
benchmarks/results/thread-stability.{json,md}.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from vitdeploy.backends import BuildConfig, ModelSource, get_backend
from vitdeploy.bench.harness import TimingPlan, random_batch, time_interleaved
from vitdeploy.hardware import environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.lut import random_pruned_specs
from vitdeploy.models.architectures import REFERENCE_MODEL
from vitdeploy.models.vit import ViT
from vitdeploy.models.zoo import load_model
from vitdeploy.tables import format_table

RESULTS = Path(__file__).parent / "results"
BATCH, REPEATS = 64, 3
PLAN = TimingPlan(warmup=3, iters=60, rounds=20)


def spreads(threads: int, models: dict[str, ViT]) -> dict:
    backend = get_backend("onnxruntime")
    config = BuildConfig(batch_sizes=(BATCH,), threads=threads).validate()
    runs = []
    with tempfile.TemporaryDirectory() as work:
        engines = {name: backend.build(ModelSource(name, Path(work) / name, model=model), config)
                   for name, model in models.items()}
        batch = random_batch(BATCH, (1, 28, 28))
        for _ in range(REPEATS):
            measured = time_interleaved(engines, batch, PLAN)
            runs.append({name: {"median_ms": m.median_ms, "p10_ms": float(np.percentile(m.latencies_ms, 10))}
                         for name, m in measured.items()})
    per_model = {name: {stat: _spread([run[name][stat] for run in runs]) for stat in ("median_ms", "p10_ms")}
                 for name in models}
    return {"threads": threads, "runs": runs, "spread_pct": per_model,
            "max_median_spread_pct": max(s["median_ms"] for s in per_model.values()),
            "max_p10_spread_pct": max(s["p10_ms"] for s in per_model.values())}


def _spread(values: list[float]) -> float:
    return 100 * (max(values) / min(values) - 1)


def main() -> None:
    base = load_model(REFERENCE_MODEL)
    models = {"unpruned": base, **{f"pruned-{i}": ViT(spec).eval()
                                   for i, spec in enumerate(random_pruned_specs(base.spec, 8, seed=0))}}
    results = [spreads(threads, models) for threads in (1, 2)]
    result = {"model": REFERENCE_MODEL, "batch": BATCH, "repeats": REPEATS, "plan": vars(PLAN),
              "results": results, "environment": environment(),
              "command": "python benchmarks/thread_stability.py " + " ".join(sys.argv[1:])}
    rows = [[r["threads"], f"{r['max_median_spread_pct']:.1f} %", f"{r['max_p10_spread_pct']:.1f} %",
             " ".join(f"{run['unpruned']['median_ms']:.1f}" for run in r["runs"])] for r in results]
    text = format_table(["threads", "largest spread of a median", "largest spread of a p10",
                         "unpruned median per run (ms)"], rows)
    write_json_atomic(RESULTS / "thread-stability.json", result)
    write_bytes_atomic(RESULTS / "thread-stability.md", (text + "\n").encode())
    print(text)


if __name__ == "__main__":
    main()

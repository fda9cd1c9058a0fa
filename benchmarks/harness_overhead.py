"""Harness overhead: latency reported by the shared harness against a bare ``session.run`` loop.

    .venv/bin/python benchmarks/harness_overhead.py

Both time the same ONNX Runtime session on the same staged batch, in alternating rounds in one
process; each call is timed with perf_counter. The overhead is harness median / bare median − 1.
Writes benchmarks/results/harness-overhead-<cpu>.json.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from vitdeploy.backends import BuildConfig, ModelSource, get_backend
from vitdeploy.hardware import cpu_name, device_slug, environment
from vitdeploy.bench.harness import TimingPlan, random_batch, time_engine
from vitdeploy.io import write_json_atomic

RESULTS = Path(__file__).parent / "results"
CASES = [("fmnist_vit", 8), ("deit_small_patch16_224", 1)]
ROUNDS, ITERS = 10, 30
THREADS = 2


def bare_loop(session, feed: dict, iters: int) -> list[float]:
    latencies = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, feed)
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies


def measure(model: str, batch: int, work_dir: Path) -> dict:
    source = ModelSource(model, work_dir)
    engine = get_backend("onnxruntime").build(source, BuildConfig(threads=THREADS, batch_sizes=(batch,)))
    x = random_batch(batch, source.input_shape())
    feed = engine.stage(x)
    bare, harness = [], []
    bare_loop(engine.session, feed, 10)
    for _ in range(ROUNDS):
        bare += bare_loop(engine.session, feed, ITERS)
        harness += time_engine(engine, model, x, TimingPlan(warmup=0, iters=ITERS)).latencies_ms
    bare_ms, harness_ms = statistics.median(bare), statistics.median(harness)
    return {"model": model, "batch": batch, "samples_each": len(bare), "bare_median_ms": bare_ms,
            "harness_median_ms": harness_ms, "overhead": harness_ms / bare_ms - 1}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(model, batch, Path(tmp)) for model, batch in CASES]
    result = {"environment": environment(THREADS), "rounds": ROUNDS, "iters_per_round": ITERS, "rows": rows,
              "command": "python benchmarks/harness_overhead.py"}
    write_json_atomic(RESULTS / f"harness-overhead-{device_slug(cpu_name())}.json", result)
    for row in rows:
        print(f"{row['model']} batch {row['batch']}: bare {row['bare_median_ms']:.3f} ms, harness "
              f"{row['harness_median_ms']:.3f} ms, overhead {row['overhead'] * 100:+.2f}%")


if __name__ == "__main__":
    main()

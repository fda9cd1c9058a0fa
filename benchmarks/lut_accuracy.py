"""Accuracy of a shipped latency table: predicted against measured end-to-end latency.

    .venv/bin/python benchmarks/lut_accuracy.py [latency_tables/amd-epyc-onnxruntime-fp32.json]

The held-out models are DeiT-S and DeiT-T plus 10 random NViT-like DeiT-S derivatives (per-block
heads, QK/V and MLP dims shrunk, random static token plans; seed 1, none of them a grid point).
Each is exported, built on the table's backend with its thread count and batch, and timed by the
shared harness. Writes benchmarks/results/lut-accuracy-<table name>.json with the MAPE and the
table's size.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vitdeploy.backends import BuildConfig
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.io import write_json_atomic
from vitdeploy.lut import evaluate_table, load_table, random_pruned_specs
from vitdeploy.models.zoo import get_spec

RESULTS = Path(__file__).parent / "results"
DEFAULT_TABLE = Path(__file__).resolve().parents[1] / "latency_tables" / "amd-epyc-onnxruntime-fp32.json"
HELD_OUT_SEED, HELD_OUT_COUNT = 1, 10


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TABLE
    table = load_table(path)
    base = get_spec("deit_small_patch16_224")
    specs = [base, get_spec("deit_tiny_patch16_224"), *random_pruned_specs(base, HELD_OUT_COUNT, seed=HELD_OUT_SEED)]
    config = BuildConfig(precision=table.metadata.precision, threads=table.metadata.threads)
    result = evaluate_table(table, specs, table.metadata.backend, config, TimingPlan(warmup=3, iters=15))
    result.update(table=path.name, table_bytes=path.stat().st_size, held_out_seed=HELD_OUT_SEED,
                  command="python benchmarks/lut_accuracy.py " + str(path.relative_to(Path.cwd())
                                                                    if path.is_relative_to(Path.cwd()) else path))
    write_json_atomic(RESULTS / f"lut-accuracy-{path.stem}.json", result)
    for row in result["models"]:
        print(f"{row['name']:40s} predicted {row['predicted_ms']:8.1f} ms  measured {row['measured_ms']:8.1f} ms  "
              f"{row['error_pct']:+6.1f}%")
    print(f"MAPE {result['mape_pct']:.2f}% over {len(result['models'])} models; table {result['table_bytes'] / 1024:.1f} KB")


if __name__ == "__main__":
    main()

"""Precision in the latency budget: `vitdeploy optimize --precisions fp32,int8` against the
fp32-only search on the Fashion-MNIST reference model, at the same budgets, measured.

    .venv/bin/python benchmarks/int8_budget.py \\
        --lut latency_tables/amd-epyc-onnxruntime-fp32-fmnist_vit-b64.json \\
        --int8-lut latency_tables/amd-epyc-onnxruntime-int8-fmnist_vit-b64.json

Both tables must be measured for fmnist_vit at the same batch and threads (``vitdeploy lut build
--for fmnist_vit --batch 64 --threads 1 [--precision int8]``). At each budget (``--budgets`` × the
unpruned fp32 latency each run measures when it starts) both searches run with the same settings.
What they wrote (``model.onnx``: the float export, or the INT8 Q/DQ graph of an INT8 pick) is
then timed on ONNX Runtime at the tables' batch and threads, every file interleaved with the
unpruned model's export in one run, and evaluated on the 10k test images with ONNX Runtime.
Writes benchmarks/results/int8-budget.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitdeploy.backends import BuildConfig, ModelSource, get_backend
from vitdeploy.bench.harness import random_batch, time_interleaved
from vitdeploy.data import batches, dataset_for
from vitdeploy.evaluate import onnx_predictions, top1
from vitdeploy.hardware import environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.lut.measure import MEASURE_PLAN
from vitdeploy.lut.table import load_table
from vitdeploy.models.architectures import REFERENCE_MODEL
from vitdeploy.models.zoo import load_model
from vitdeploy.optimize import OptimizeConfig, optimize
from vitdeploy.tables import format_table

RESULTS = Path(__file__).parent / "results"
SEARCHES = ("fp32", "fp32,int8")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut", required=True, help="fp32 latency table measured for fmnist_vit")
    parser.add_argument("--int8-lut", required=True, help="INT8 latency table measured for fmnist_vit")
    parser.add_argument("--budgets", default="0.5,0.35", help="budgets as shares of the unpruned latency")
    parser.add_argument("--final-steps", type=int, default=200, help="distilled fine-tuning steps of the pick")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the searches")
    parser.add_argument("--name", default="int8-budget", help="results file stem under benchmarks/results/")
    return parser.parse_args(argv)


def run_searches(base, args, out: Path) -> list[dict]:
    runs = []
    for share in [float(s) for s in args.budgets.split(",")]:
        for precisions in SEARCHES:
            config = OptimizeConfig(lut=args.lut, int8_lut=args.int8_lut if "int8" in precisions else None,
                                    budget_ratio=share, precisions=precisions, finetune_steps=args.final_steps,
                                    threads=args.threads)
            started = time.perf_counter()
            result = optimize(base, config, out / f"{share}-{precisions.replace(',', '-')}")
            runs.append({"budget": share, "search": precisions, "result": result,
                         "wall_s": time.perf_counter() - started,
                         "onnx": str(out / f"{share}-{precisions.replace(',', '-')}" / "model.onnx")})
    return runs


def time_written(base, runs: list[dict], table, work: Path) -> dict[str, float]:
    """Every written model.onnx and the unpruned export, interleaved in one run: ratios to the unpruned."""
    meta = table.metadata
    backend = get_backend(meta.backend)
    config = BuildConfig(batch_sizes=(meta.batch,), threads=meta.threads).validate()
    sources = {"unpruned": ModelSource(REFERENCE_MODEL, work / "unpruned", model=base)}
    sources.update({label(run): ModelSource(run["onnx"], work) for run in runs})
    engines = {name: backend.build(source, config) for name, source in sources.items()}
    spec = base.spec
    measured = time_interleaved(engines, random_batch(meta.batch, (spec.in_chans, spec.img_size, spec.img_size)),
                                MEASURE_PLAN)
    return {name: m.median_ms for name, m in measured.items()}


def label(run: dict) -> str:
    return f"{run['budget']}× {run['search']}"


def rows_for(runs: list[dict], times: dict[str, float], test_set) -> list[dict]:
    labels = torch.cat([torch.as_tensor(y) for _, y in batches(test_set, 1024)])
    rows = []
    for run in runs:
        result = run["result"]
        ratio = times[label(run)] / times["unpruned"]
        rows.append({
            "budget": run["budget"], "search": run["search"], "chosen": result["chosen"],
            "precision": result["final"]["precision"], "measured_ms": times[label(run)], "measured_ratio": ratio,
            "budget_error_pct": 100 * (ratio / run["budget"] - 1),
            "test_top1": top1(onnx_predictions(Path(run["onnx"]), test_set), labels),
            "own_check": result["final"]["latency"], "candidates": len(result["candidates"]),
            "wall_s": run["wall_s"]})
    return rows


def markdown(rows: list[dict], unpruned_ms: float, command: str) -> str:
    table = format_table(
        ["budget", "search", "chosen", "precision", "× unpruned fp32", "vs budget", "test top-1 (ONNX)", "candidates",
         "wall min"],
        [[f"{r['budget']}×", r["search"], r["chosen"], r["precision"], f"{r['measured_ratio']:.3f}",
          f"{r['budget_error_pct']:+.1f} %", f"{100 * r['test_top1']:.2f} %", r["candidates"],
          f"{r['wall_s'] / 60:.1f}"] for r in rows])
    return (f"{table}\n\nunpruned fp32 export: {unpruned_ms:.2f} ms; every written model.onnx timed interleaved with "
            f"it in one run; top-1 on the 10k test images with ONNX Runtime.\n\n`{command}`\n")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    base = load_model(REFERENCE_MODEL)
    table = load_table(args.lut)
    with tempfile.TemporaryDirectory(prefix="int8-budget-") as work:
        runs = run_searches(base, args, Path(work))
        times = time_written(base, runs, table, Path(work))
        rows = rows_for(runs, times, dataset_for(base, "fashion-mnist", "test"))
    command = "python benchmarks/int8_budget.py " + " ".join(argv)
    result = {"rows": rows, "unpruned_ms": times["unpruned"], "lut": args.lut, "int8_lut": args.int8_lut,
              "final_steps": args.final_steps, "environment": environment(table.metadata.threads),
              "command": command}
    write_json_atomic(RESULTS / f"{args.name}.json", result)
    text = markdown(rows, times["unpruned"], command)
    write_bytes_atomic(RESULTS / f"{args.name}.md", text.encode())
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])

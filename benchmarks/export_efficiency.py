"""vitdeploy's export against torch's other exporter, same unpruned weights, ONNX Runtime CPU, interleaved.

    .venv/bin/python benchmarks/export_efficiency.py                     # the committed run
    .venv/bin/python benchmarks/export_efficiency.py --models fmnist_vit --iters 4 --rounds 2 \\
        --results /tmp/smoke                                              # a smoke run

For each model (fmnist_vit with its shipped weights, DeiT-S with seeded random weights), export
it twice: vitdeploy's checked export (dynamo exporter + ``vitdeploy.export.fuse``) and torch's
TorchScript exporter (``vitdeploy.export.reference``). Both are built once per thread count and
timed interleaved in one process at each batch size. ``speed_vs_other`` is the other export's
median latency over ours (≥ 1.0 means ours is at least as fast). Beside the timings, the JSON
holds each graph's op counts before and after ONNX Runtime's own optimisation.
Writes benchmarks/results/export-efficiency-<cpu>-onnxruntime.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx
import torch

from vitdeploy.backends import MAX_THREADS, BuildConfig, ModelSource
from vitdeploy.hardware import cpu_name, device_slug, environment
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.run import bench_sources
from vitdeploy.cli._options import batch_list, whole_number_list
from vitdeploy.export import check
from vitdeploy.export.onnx import export_onnx
from vitdeploy.export.reference import export_torchscript
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.zoo import load_model
from vitdeploy.tables import format_table

RESULTS = Path(__file__).parent / "results"
OURS, OTHER = "vitdeploy", "torchscript"


def export_both(ref: str, work_dir: Path) -> dict[str, dict]:
    """Both exports of ``ref``: their sources and op counts (exported, and as ONNX Runtime runs them)."""
    model = load_model(ref)
    ours, other = work_dir / f"{ref}-{OURS}.onnx", work_dir / f"{ref}-{OTHER}.onnx"
    report = export_onnx(model, ours)
    export_torchscript(model, other)
    return {
        OURS: {"source": ModelSource(str(ours), work_dir, model=model), "export_seconds": report.export_seconds,
               "op_counts": {"before": report.fusion.written, "after": report.fusion.onnxruntime},
               "passes": report.fusion.passes},
        OTHER: {"source": ModelSource(str(other), work_dir, model=model),
                "op_counts": {"before": check.op_counts(onnx.load(str(other)).graph.node), "after": optimized_counts(other)}},
    }


def optimized_counts(path: Path) -> dict[str, int]:
    """Op counts of ``path`` after ONNX Runtime's graph optimisation, as the export report gives them."""
    with tempfile.TemporaryDirectory() as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        check.ort_session(path, optimized)
        return check.op_counts(onnx.load(str(optimized)).graph.node)


def measure(exports: dict[str, dict], threads: int, batches: tuple[int, ...], plan: TimingPlan) -> list[dict]:
    sources = {name: entry["source"] for name, entry in exports.items()}
    result = bench_sources(sources, "onnxruntime", BuildConfig(batch_sizes=batches, threads=threads), plan,
                           progress=True)
    median = {(row["model"], row["batch"]): row["median_ms"] for row in result.rows}
    return [{"threads": threads, "batch": batch, f"{OURS}_ms": median[OURS, batch], f"{OTHER}_ms": median[OTHER, batch],
             "speed_vs_other": median[OTHER, batch] / median[OURS, batch]} for batch in batches]


def summary_markdown(models: dict[str, dict]) -> str:
    rows = [[ref, r["threads"], r["batch"], f"{r[f'{OURS}_ms']:.2f}", f"{r[f'{OTHER}_ms']:.2f}",
             f"{r['speed_vs_other']:.2f}×"] for ref, entry in models.items() for r in entry["timings"]]
    counts = [[ref, name, sum(c["op_counts"]["before"].values()), sum(c["op_counts"]["after"].values())]
              for ref, entry in models.items() for name, c in entry["graphs"].items()]
    return ("## Latency (median ms), ONNX Runtime CPU, interleaved\n\n"
            + format_table(["model", "threads", "batch", f"{OURS} ms", f"{OTHER} ms", "ours vs other"], rows)
            + "\n\n## Nodes before and after ONNX Runtime's graph optimisation\n\n"
            + format_table(["model", "export", "nodes", "nodes after ORT"], counts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist_vit,deit_small_patch16_224")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", default="8,64")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the .json and .md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    plan = TimingPlan(warmup=10, iters=args.iters, rounds=args.rounds)
    batches = batch_list(args.batch)
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ref in args.models.split(","):
            exports = export_both(ref, Path(tmp))
            timings = [row for threads in whole_number_list(1, MAX_THREADS, "thread counts")(args.threads)
                       for row in measure(exports, threads, batches, plan)]
            graphs = {name: {key: value for key, value in entry.items() if key != "source"}
                      for name, entry in exports.items()}
            models[ref] = {"graphs": graphs, "timings": timings}
    command = (f"python benchmarks/export_efficiency.py --models {args.models} --threads {args.threads} "
               f"--batch {args.batch} --iters {args.iters} --rounds {args.rounds}")
    stem = args.results / f"export-efficiency-{device_slug(cpu_name())}-onnxruntime"
    write_json_atomic(stem.with_suffix(".json"), {"command": command, "environment": environment(),
                                                  "timing": vars(plan), "models": models})
    summary = summary_markdown(models)
    write_bytes_atomic(stem.with_suffix(".md"), (f"`{command}` on {cpu_name()}\n\n" + summary).encode())
    print(summary)


if __name__ == "__main__":
    main()

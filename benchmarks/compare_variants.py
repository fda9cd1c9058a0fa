"""Baseline against pruned variants, measured side by side (interleaved) in one process.

    .venv/bin/python benchmarks/compare_variants.py                       # DeiT-S, the issue-3 plan
    .venv/bin/python benchmarks/compare_variants.py --model fmnist_vit --variant keep50=2:0.5,4:0.5

Each variant is the model with a static class-attention token plan. Every model is exported
through the checked exporter and built once; then all are timed interleaved per batch size.
Writes benchmarks/results/<name>.{json,md,png}; the JSON also holds each variant's MACs ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.bench.device import cpu_name, device_slug
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.report import markdown_report, write_result
from vitdeploy.bench.run import bench_sources, parse_batches
from vitdeploy.models.flops import total_macs
from vitdeploy.models.zoo import load_model
from vitdeploy.tokens.plan import apply_keep_plan

RESULTS = Path(__file__).parent / "results"
DEFAULT_VARIANTS = ["keep70=4:0.7,7:0.7,10:0.7"]


def variant_sources(model_ref: str, variants: list[str], work_dir: Path) -> dict[str, ModelSource]:
    base = load_model(model_ref)
    sources = {"baseline": ModelSource(model_ref, work_dir, model=base)}
    for item in variants:
        name, _, keep = item.partition("=")
        sources[name] = ModelSource(f"{model_ref}+{name}", work_dir, model=apply_keep_plan(base, keep))
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--variant", action="append", help="NAME=KEEP_PLAN (repeatable)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--batch", default="8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--name", help="result file stem (default: MODEL-DEVICE-BACKEND)")
    args = parser.parse_args()
    config = BuildConfig(batch_sizes=parse_batches(args.batch), threads=args.threads)
    plan = TimingPlan(warmup=10, iters=args.iters, rounds=args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        sources = variant_sources(args.model, args.variant or DEFAULT_VARIANTS, Path(tmp))
        result = bench_sources(sources, args.backend, config, plan, progress=True)
    base_macs = total_macs(sources["baseline"].torch_model().spec)
    for row in result.rows:
        row["macs_ratio"] = base_macs / row["macs"]
    result.config["command"] = "python benchmarks/compare_variants.py " + " ".join(
        f"--variant {v}" for v in args.variant or DEFAULT_VARIANTS) + f" --model {args.model} --batch {args.batch}"
    stem = args.name or f"{args.model}-{device_slug(cpu_name())}-{args.backend}"
    write_result(result, RESULTS / stem)
    print(markdown_report(result))


if __name__ == "__main__":
    main()

"""Measured ONNX Runtime CPU speedup of static token plans against their FLOPs ratio, interleaved.

    .venv/bin/python benchmarks/token_pruning_speed.py fmnist --batch 8,64 --iters 200 --rounds 10
                                                   # every static plan of token-pruning-fmnist.json
    .venv/bin/python benchmarks/token_pruning_speed.py deit     # DeiT-S shapes, each method at 0.75× and 0.6× FLOPs
    .venv/bin/python benchmarks/token_pruning_speed.py deit --plans-only   # compute the DeiT-S plans, no timing
    .venv/bin/python benchmarks/token_pruning_speed.py spvit --batch 8,64 --iters 200 --rounds 10
                                                   # the static SPViT graphs of spvit-fmnist.json
    .venv/bin/python benchmarks/token_pruning_speed.py spvit-deit   # SPViT's DeiT-S graphs at 0.7× and 0.5× FLOPs

SPViT graphs are timed next to their class-attention twins (same keep counts and package token,
no selector), which isolates what the selectors cost.

All models of a run are exported through the checked exporter, built once, and timed interleaved
in one process (batch 8 by default, 2 threads). The unpruned model is also timed through torch's
TorchScript exporter (``--no-other-exporter-baseline`` leaves it out), and speedups are quoted
against the faster of the two baselines. The DeiT-S plans come from each method run on the seeded
random-init DeiT-S with Gaussian-noise calibration images: their accuracy means nothing, but
their shapes and operators are those of real plans, which is what latency depends on.
Writes benchmarks/results/token-pruning-speed-<model>-<cpu>-onnxruntime.{json,md,png} (spvit-speed-… for spvit).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from common import other_exporter_baseline, speedup_table

from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.hardware import cpu_name, device_slug
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.report import write_result
from vitdeploy.bench.run import bench_sources
from vitdeploy.cli._options import batch_list
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.spec import TokenStep, ViTSpec
from vitdeploy.models.zoo import load_model
from vitdeploy.prune.methods.spvit.algorithm import static_plan, student_from
from vitdeploy.prune.methods.spvit.config import SPViTConfig
from vitdeploy.prune.token_config import token_config
from vitdeploy.prune.token_methods import prune_tokens
from vitdeploy.models.token_plan import with_spec

RESULTS = Path(__file__).parent / "results"
DEIT_LEVELS = (0.75, 0.6)
SPVIT_DEIT_BUDGETS = (0.7, 0.5)
DEIT_METHODS = {
    "patch-slimming": token_config("patch-slimming", granularity=14, calib_size=8),
    "star": token_config("star", rounds=2, calib_batch=8, calib_size=16),
    "uniform": token_config("uniform"),
    "cls-attn": token_config("cls-attn"),
    "cls-attn+package": token_config("cls-attn", package=True),
    "random": token_config("random"),
}


def fmnist_plans() -> tuple[str, dict[str, ViTSpec]]:
    rows = json.loads((RESULTS / "token-pruning-fmnist.json").read_text())["rows"]
    return "fmnist_vit", {f"{r['method']}@{r['target_flops']}": ViTSpec.from_dict(r["spec"])
                          for r in rows if "export" in r}


def spvit_plans() -> tuple[str, dict[str, ViTSpec]]:
    """The distinct static SPViT graphs of spvit-fmnist.json, rebuilt from their keep counts and
    settings (the selectors' weights do not change the shapes or operators, so the seeded init
    stands in), each with its class-attention twin."""
    base = load_model("fmnist_vit").spec
    plans = {}
    for row in json.loads((RESULTS / "spvit-fmnist.json").read_text())["rows"]:
        if row["method"].startswith("spvit"):
            config = row["config"]
            steps = {b: TokenStep(keep=k, selector="spvit", package=config["package"],
                                  package_mode=config["package_mode"], selector_heads=config["selector_heads"])
                     for b, k in enumerate(row["keep"]) if k is not None}
            spec = base.with_token_plan(steps)
            if spec not in plans.values():  # rows that differ only in training share a graph
                plans[f"{row['method']}@{row['budget']}"] = spec
    return "fmnist_vit", with_cls_attn_twins(plans)


def spvit_deit_plans() -> tuple[str, dict[str, ViTSpec]]:
    """SPViT's static graphs for DeiT-S (selectors after blocks 3, 6, 9) at each budget, with twins."""
    base = load_model("deit_small_patch16_224").spec
    return "deit_small_patch16_224", with_cls_attn_twins(
        {f"spvit@{budget}": static_plan(base, SPViTConfig(budget_flops=budget))[0] for budget in SPVIT_DEIT_BUDGETS})


def with_cls_attn_twins(plans: dict[str, ViTSpec]) -> dict[str, ViTSpec]:
    """Each SPViT plan followed by its twin ranking by class attention instead of a selector (same
    keep counts and package tokens): the gap between the two is the selectors' own cost."""
    twins = {}
    for name, spec in plans.items():
        twins[name] = spec
        twins[name.replace("spvit", "cls-attn-twin", 1)] = spec.with_token_plan({
            b: replace(block.tokens, selector="cls_attn", selector_heads=None)
            for b, block in enumerate(spec.blocks) if block.tokens.active})
    return twins


def deit_plans() -> tuple[str, dict[str, ViTSpec]]:
    """Computed once and kept in token-pruning-deit-plans.json (delete it to recompute)."""
    path = RESULTS / "token-pruning-deit-plans.json"
    if not path.exists():
        write_json_atomic(path, {name: spec.to_dict() for name, spec in compute_deit_plans().items()})
    return "deit_small_patch16_224", {name: ViTSpec.from_dict(d) for name, d in json.loads(path.read_text()).items()}


def compute_deit_plans() -> dict[str, ViTSpec]:
    model = load_model("deit_small_patch16_224")
    noise = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    plans = {}
    for level in DEIT_LEVELS:
        for name, config in DEIT_METHODS.items():
            images = noise[:getattr(config, "calib_size", len(noise))]
            plans[f"{name}@{level}"] = prune_tokens(model, replace(config, target_flops=level), images,
                                                    progress=False)[0].spec
            print(f"planned {name}@{level}", file=sys.stderr)
    return plans


def plan_model(base, spec: ViTSpec):
    """``base``'s weights under ``spec``; SPViT selectors get spvit.student_from's seeded init."""
    if any(b.tokens.selector == "spvit" for b in spec.blocks):
        return student_from(base, spec, seed=0).eval()
    return with_spec(base, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=tuple(PLANS))
    parser.add_argument("--batch", default="8", help="batch sizes, e.g. 8,64")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--plans-only", action="store_true", help="compute and store the plans, time nothing")
    parser.add_argument("--other-exporter-baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the unpruned model through torch's TorchScript exporter; speedups are "
                             "against the faster baseline (default: on)")
    args = parser.parse_args()
    torch.set_num_threads(1 if args.plans_only else 2)
    ref, plans = PLANS[args.model]()
    if args.plans_only:
        return
    base = load_model(ref)
    config = BuildConfig(batch_sizes=batch_list(args.batch), threads=2)
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"baseline": ModelSource(ref, tmp, model=base)}
        if args.other_exporter_baseline:
            sources.update(other_exporter_baseline(base, tmp))
        sources.update({name: ModelSource(name, tmp, model=plan_model(base, spec)) for name, spec in plans.items()})
        result = bench_sources(sources, "onnxruntime", config, TimingPlan(warmup=10, iters=args.iters,
                                                                          rounds=args.rounds), progress=True)
    result.config["command"] = (f"python benchmarks/token_pruning_speed.py {args.model} --batch {args.batch} "
                                f"--iters {args.iters} --rounds {args.rounds}"
                                + ("" if args.other_exporter_baseline else " --no-other-exporter-baseline"))
    prefix = "spvit-speed" if args.model.startswith("spvit") else "token-pruning-speed"
    stem = RESULTS / f"{prefix}-{ref}-{device_slug(cpu_name())}-onnxruntime"
    write_result(result, stem)
    summary = speedup_table(result.rows)
    write_bytes_atomic(stem.with_suffix(".summary.md"), (summary + "\n").encode())
    print(summary)


PLANS = {"fmnist": fmnist_plans, "deit": deit_plans, "spvit": spvit_plans, "spvit-deit": spvit_deit_plans}


if __name__ == "__main__":
    main()

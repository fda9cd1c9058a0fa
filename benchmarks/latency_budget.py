"""Latency budgets on the Fashion-MNIST reference model (issue 16): NViT alone, STAR alone and the
joint optimiser, each at the same budgets, measured.

    .venv/bin/python benchmarks/latency_budget.py --lut latency_tables/TABLE.json

The table must be measured for fmnist_vit (``vitdeploy lut build --for fmnist_vit --batch 64``).
Budgets are ``--budgets`` × the unpruned latency: each optimiser run measures the unpruned model
when it starts and takes that share of it (``--budget-ratio``), so all three methods get the same
target ratio however fast the machine is at that moment. At each budget:

- ``vitdeploy prune nvit --target-latency-ms BUDGET --lut TABLE``: the result's own check
  against its target (measured interleaved with the unpruned model; no fine-tune, latency does
  not depend on the weights);
- NViT alone: ``vitdeploy optimize --search nvit``: NViT with the table's latency term and
  stopping rule down to the budget, then ``--final-steps`` distilled fine-tuning steps;
- STAR alone: ``vitdeploy optimize --search tokens``: STAR's ρ solved for the budget on the
  unpruned structure, then the same distilled fine-tune;
- joint: ``vitdeploy optimize --search joint``: NViT snapshots × STAR plans, the best proxy
  candidate, the same fine-tune.

Every model is then timed once more, all of them interleaved in one run with the unpruned model
(the figures compared in the table and plot), and evaluated on the 10k test images. Latency is
compared as a ratio to the unpruned model in that run (this shared 2-core machine runs at half
speed for seconds at a time): the prediction error is |measured ratio − predicted ratio| /
measured ratio, the budget error measured ratio / target ratio − 1 (the optimiser's target ratio is
the budget share; NViT's is its target in ms over the unpruned latency it measured when it started). Writes
benchmarks/results/latency-budget.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import png_bytes
from vitdeploy.data import dataset_for
from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import evaluate
from vitdeploy.hardware import environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.lut.measure import MEASURE_PLAN, measure_models, table_for_model
from vitdeploy.lut.table import predict
from vitdeploy.models.architectures import REFERENCE_MODEL
from vitdeploy.models.zoo import load_model
from vitdeploy.optimize import OptimizeConfig, optimize
from vitdeploy.prune.nvit_config import NViTConfig
from vitdeploy.prune.registry import PruneContext, get_method
from vitdeploy.tables import format_table

RESULTS = Path(__file__).parent / "results"
METHODS = ("NViT alone", "STAR alone", "joint")
TARGET_ERROR_PCT = 10.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut", required=True, help="latency table measured for fmnist_vit")
    parser.add_argument("--budgets", default="0.7,0.5,0.35", help="budgets as shares of the unpruned latency")
    parser.add_argument("--final-steps", type=int, default=300, help="distilled fine-tuning steps of every result")
    parser.add_argument("--step-steps", type=int, default=20, help="NViT fine-tuning steps after each pruning step")
    parser.add_argument("--prune-step", type=float, default=0.05, help="NViT latency removed per step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    parser.add_argument("--name", default="latency-budget", help="results file stem under benchmarks/results/")
    return parser.parse_args(argv)


def nvit_target_check(model, budget_ms: float, args) -> dict:
    """``vitdeploy prune nvit --target-latency-ms``: its own check of the result against the target
    (no final fine-tune: latency does not depend on the weights)."""
    config = NViTConfig(target_flops=None, target_latency_ms=budget_ms, lut=args.lut, prune_step=args.prune_step,
                        finetune_steps=args.step_steps, final_finetune_steps=0, threads=args.threads)
    _, report = get_method("nvit").prune(model, config, PruneContext(data="fashion-mnist", progress=True))
    return {"budget_ms": budget_ms, **report["latency"], "dims": report["dims"]["after"]}


def optimized(model, share: float, search: str, args, work: Path) -> tuple[object, dict]:
    config = OptimizeConfig(budget_ratio=share, lut=args.lut, search=search, prune_step=args.prune_step,
                            step_finetune_steps=args.step_steps, finetune_steps=args.final_steps,
                            eval_limit=args.test_limit, threads=args.threads)
    out = work / f"{search}-{share:g}"
    result = optimize(model, config, out)
    return load_model(str(out / "model")), {"latency": result["final"]["latency"], "optimize": result}


def run(args) -> dict:
    started = time.perf_counter()
    base = load_model(REFERENCE_MODEL)
    table, drift = table_for_model(args.lut, base)
    base_ms = drift.measured_ms
    test = dataset_for(base, "fashion-mnist", "test", args.test_limit)
    models, rows, unreachable, target_checks = {"unpruned": base}, [], [], []
    with tempfile.TemporaryDirectory(prefix="latency-budget-") as work:
        for share in (float(s) for s in args.budgets.split(",")):
            target_checks.append({"budget_share": share, **nvit_target_check(base, share * base_ms, args)})
            runs = {"NViT alone": lambda: optimized(base, share, "nvit", args, Path(work)),
                    "STAR alone": lambda: optimized(base, share, "tokens", args, Path(work)),
                    "joint": lambda: optimized(base, share, "joint", args, Path(work))}
            for method, make in runs.items():
                try:
                    model, details = make()
                except VitDeployError as exc:  # e.g. STAR alone cannot reach the budget
                    unreachable.append({"method": method, "budget_share": share, "reason": str(exc)})
                    continue
                name = f"{method} @ {share:g}x"
                models[name] = model
                rows.append({"name": name, "method": method, "budget_share": share,
                             "target_ratio": details["latency"]["target_ratio"],
                             "predicted_ms": predict(table, model.spec)["total_ms"],
                             "check_in_run": details["latency"], "details": details})
        measured = measure_models(models, table.metadata, MEASURE_PLAN)
    unpruned_top1 = evaluate(base, test)
    base_predicted = predict(table, base.spec)["total_ms"]
    for row in rows:
        ratio = measured[row["name"]] / measured["unpruned"]
        predicted_ratio = row["predicted_ms"] / base_predicted
        row.update(measured_ms=measured[row["name"]], measured_ratio=ratio, predicted_ratio=predicted_ratio,
                   top1=evaluate(models[row["name"]], test),
                   prediction_error_pct=100 * abs(ratio - predicted_ratio) / ratio,
                   target_error_pct=100 * (ratio / row["target_ratio"] - 1))
    return {"model": REFERENCE_MODEL, "table": args.lut, "key": list(table.key), "drift": drift.to_dict(),
            "unpruned": {"measured_ms": measured["unpruned"], "top1": unpruned_top1},
            "settings": {k: v for k, v in vars(args).items()}, "rows": rows, "unreachable": unreachable,
            "nvit_target_checks": target_checks,
            "joint_dominates": dominance(rows),
            "command": "python benchmarks/latency_budget.py " + " ".join(sys.argv[1:]),
            "environment": environment(args.threads), "seconds": round(time.perf_counter() - started, 1)}


def dominance(rows: list[dict]) -> dict[str, bool]:
    """Per budget: whether joint is at least as accurate (test top-1) as every other method that
    reached the budget."""
    verdict = {}
    for share in sorted({r["budget_share"] for r in rows}, reverse=True):
        at = {r["method"]: r for r in rows if r["budget_share"] == share}
        if "joint" in at:
            verdict[f"{share:g}x"] = all(at["joint"]["top1"] >= r["top1"] for m, r in at.items() if m != "joint")
    return verdict


def markdown(result: dict) -> str:
    header = ["budget", "method", "measured ms", "× unpruned measured", "× unpruned predicted", "prediction error",
              "vs budget", "top-1"]
    rows = [[f"{r['budget_share']:g}×", r["method"], f"{r['measured_ms']:.2f}", f"{r['measured_ratio']:.3f}",
             f"{r['predicted_ratio']:.3f}", f"{r['prediction_error_pct']:.1f} %", f"{r['target_error_pct']:+.1f} %",
             f"{r['top1']:.4f}"] for r in result["rows"]]
    unpruned = result["unpruned"]
    lines = [
        f"# Latency budgets: {result['model']}, {result['key'][1]} {result['key'][2]}, batch {result['key'][3]}, "
        f"{result['key'][0]}", "",
        f"Unpruned: {unpruned['measured_ms']:.2f} ms measured, top-1 {unpruned['top1']:.4f}. "
        f"Drift correction: the table predicted {result['drift']['predicted_ms']:.2f} ms for it, "
        f"factor {result['drift']['factor']:.3f}.", "",
        format_table(header, rows), "",
        *[f"{u['method']} at {u['budget_share']:g}×: no model, {u['reason']}" for u in result["unreachable"]],
        "",
        "`vitdeploy prune nvit --target-latency-ms` (each run's own check, measured interleaved with the unpruned "
        "model; its target ratio is the budget over the unpruned latency it measured when it started):", "",
        format_table(["budget", "target ms", "target × unpruned", "measured × unpruned", "vs target",
                      "prediction error"],
                     [[f"{c['budget_share']:g}×", f"{c['target_ms']:.2f}", f"{c['target_ratio']:.3f}",
                       f"{c['measured_ratio']:.3f}", f"{c['target_error_pct']:+.1f} %",
                       f"{c['prediction_error_pct']:.1f} %"] for c in result["nvit_target_checks"]]),
        "",
        "Joint at least as accurate as every other method that reached the budget: "
        + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in result["joint_dominates"].items()), "",
        f"Command: `{result['command']}` ({result['seconds'] / 60:.0f} min)",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        points = sorted((r["measured_ratio"], 100 * r["top1"]) for r in result["rows"] if r["method"] == method)
        if points:
            ax.plot(*zip(*points), marker="o", label=method)
    unpruned = result["unpruned"]
    ax.scatter([1.0], [100 * unpruned["top1"]], color="black", marker="*", s=80, label="unpruned")
    for share in sorted({r["budget_share"] for r in result["rows"]}):
        ax.axvline(share, color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel(f"measured latency, × the unpruned model's (batch {result['key'][3]}, {result['key'][1]}, "
                  "interleaved); dotted: budgets")
    ax.set_ylabel("top-1 % (Fashion-MNIST test)")
    ax.set_title("fmnist_vit under latency budgets")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    result = run(args)
    stem = RESULTS / args.name
    write_json_atomic(stem.with_suffix(".json"), result)
    write_bytes_atomic(stem.with_suffix(".md"), markdown(result).encode())
    write_bytes_atomic(stem.with_suffix(".png"), plot(result))
    print(markdown(result))


if __name__ == "__main__":
    main(sys.argv[1:])

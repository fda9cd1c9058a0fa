"""Latency budgets on the Fashion-MNIST reference model: `vitdeploy optimize` against the single
methods it must beat, at the same budgets and with the same fine-tune, measured.

    .venv/bin/python benchmarks/latency_budget.py --lut latency_tables/amd-epyc-onnxruntime-fp32-fmnist_vit-b64.json

The table must be measured for fmnist_vit (``vitdeploy lut build --for fmnist_vit --batch 64``).
At each budget (``--budgets`` × the unpruned latency; every run measures the unpruned model when
it starts and takes that share of it):

- NViT alone: ``vitdeploy prune nvit --target-latency-ms BUDGET --lut TABLE`` on its own schedule
  (0.05 of the latency per step, 40 fine-tuning steps after each) and a ``--final-steps``
  distilled fine-tune; its own latency check is kept;
- STAR alone: ``vitdeploy prune star --target-latency-ms BUDGET --lut TABLE``, then the same
  distilled fine-tune;
- ``vitdeploy optimize --budget-ratio SHARE --finetune-steps FINAL`` (at the budgets in
  ``--check-ranking-at`` also ``--check-ranking``: every candidate fine-tuned fully, so the proxy's
  rank correlation with test top-1 is measured).

Every model is then timed once more, all of them interleaved in one run with the unpruned model,
and evaluated on the 10k test images. Latency is a ratio to the unpruned model in that run; the
budget error is measured ratio / budget − 1 (goal: at most +3 %). Wall time: optimize's (without
the ranking check) against prune nvit's at the same budget (goal: at most 3×). Writes
benchmarks/results/latency-budget.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import accuracy_latency_png
from vitdeploy.data import dataset_for
from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import evaluate
from vitdeploy.hardware import environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.lut.measure import MEASURE_PLAN, measure_models, table_for_model
from vitdeploy.models.architectures import REFERENCE_MODEL
from vitdeploy.models.zoo import load_model
from vitdeploy.optimize import OptimizeConfig, optimize
from vitdeploy.prune.methods.nvit.config import NViTConfig
from vitdeploy.prune.registry import METHODS, PruneContext
from vitdeploy.prune.token_config import token_config
from vitdeploy.tables import format_table
from vitdeploy.train.loop import fine_tune

RESULTS = Path(__file__).parent / "results"
METHODS = ("NViT alone", "STAR alone", "optimize")
BUDGET_TOLERANCE_PCT, WALL_TIME_GOAL = 3.0, 3.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut", required=True, help="latency table measured for fmnist_vit")
    parser.add_argument("--budgets", default="0.75,0.5,0.35", help="budgets as shares of the unpruned latency")
    parser.add_argument("--final-steps", type=int, default=300, help="distilled fine-tuning steps of every result")
    parser.add_argument("--check-ranking-at", default="0.5", help="budgets at which optimize checks its ranking "
                                                                  "(comma-separated; '' for none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    parser.add_argument("--name", default="latency-budget", help="results file stem under benchmarks/results/")
    return parser.parse_args(argv)


def budget_now(base, share: float, args) -> float:
    """``share`` of the unpruned latency measured now (the way each run measures it when it starts)."""
    return share * table_for_model(args.lut, base)[1].measured_ms


def timed(make):
    """A run's (model, details, wall seconds)."""
    def run_timed(*args):
        started = time.perf_counter()
        model, details = make(*args)
        return model, details, time.perf_counter() - started

    return run_timed


@timed
def nvit_alone(base, budget_ms: float, args) -> tuple[object, dict]:
    config = NViTConfig(target_flops=None, target_latency_ms=budget_ms, lut=args.lut,
                        final_finetune_steps=args.final_steps, threads=args.threads)
    return METHODS.get("nvit").prune(base, config, PruneContext(data="fashion-mnist", progress=True))


@timed
def star_alone(base, budget_ms: float, args, train) -> tuple[object, dict]:
    config = token_config("star", target_latency_ms=budget_ms, lut=args.lut)
    model, report = METHODS.get("star").prune(base, config, PruneContext(data="fashion-mnist", progress=True))
    report["fine_tune"] = fine_tuned(model, base, train, args)
    return model, report


def fine_tuned(model, teacher, train, args) -> dict:
    """Fine-tune ``model`` in place for ``--final-steps``, distilled from ``teacher``; its report."""
    tune = NViTConfig(threads=args.threads).train_config(seed_offset=1)
    return fine_tune(model, train, tune, args.final_steps, teacher=teacher, progress=True)


@timed
def optimized(base, share: float, args, work: Path) -> tuple[object, dict]:
    check = share in {float(s) for s in args.check_ranking_at.split(",") if s.strip()}
    return optimize_at(base, share, args, work, check_ranking=check)


def optimize_at(base, share: float, args, work: Path, **settings) -> tuple[object, dict]:
    """``vitdeploy optimize`` at ``share`` of the unpruned latency, with ``settings`` beyond the
    run's own: the chosen model and the result."""
    config = OptimizeConfig(budget_ratio=share, lut=args.lut, finetune_steps=args.final_steps,
                            eval_limit=args.test_limit, threads=args.threads, **settings)
    out = Path(tempfile.mkdtemp(prefix=f"optimize-{share:g}-", dir=work))
    result = optimize(base, config, out)
    return load_model(str(out / "model")), result


def reference_setup(args):
    """The shipped reference model, its table checked against it (and the drift), the train and test data."""
    base = load_model(REFERENCE_MODEL)
    table, drift = table_for_model(args.lut, base)
    train = dataset_for(base, "fashion-mnist", "train")
    return base, table, drift, train, dataset_for(base, "fashion-mnist", "test", args.test_limit)


def run(args) -> dict:
    started = time.perf_counter()
    base, table, drift, train, test = reference_setup(args)
    models, rows, unreachable = {"unpruned": base}, [], []
    with tempfile.TemporaryDirectory(prefix="latency-budget-") as work:
        for share in (float(s) for s in args.budgets.split(",")):
            runs = {"NViT alone": lambda: nvit_alone(base, budget_now(base, share, args), args),
                    "STAR alone": lambda: star_alone(base, budget_now(base, share, args), args, train),
                    "optimize": lambda: optimized(base, share, args, Path(work))}
            for method, make in runs.items():
                try:
                    model, details, seconds = make()
                except VitDeployError as exc:  # e.g. STAR alone cannot reach the budget
                    unreachable.append({"method": method, "budget_share": share, "reason": str(exc)})
                    continue
                name = f"{method} @ {share:g}x"
                models[name] = model
                rows.append({"name": name, "method": method, "budget_share": share, "seconds": round(seconds, 1),
                             "details": details})
        measured = measure_models(models, table.metadata, MEASURE_PLAN, progress=True)
    unpruned_top1 = evaluate(base, test)
    for row in rows:
        ratio = measured[row["name"]] / measured["unpruned"]
        row.update(measured_ms=measured[row["name"]], measured_ratio=ratio, top1=evaluate(models[row["name"]], test),
                   budget_error_pct=100 * (ratio / row["budget_share"] - 1))
    return {"model": REFERENCE_MODEL, "table": args.lut, "key": list(table.key), "drift": drift.to_dict(),
            "unpruned": {"measured_ms": measured["unpruned"], "top1": unpruned_top1},
            "settings": vars(args), "rows": rows, "unreachable": unreachable, "verdicts": verdicts(rows),
            "command": "python benchmarks/latency_budget.py " + " ".join(sys.argv[1:]),
            "environment": environment(args.threads), "seconds": round(time.perf_counter() - started, 1)}


def verdicts(rows: list[dict]) -> list[dict]:
    """Per budget: optimize's top-1 against the best single method's, its budget error and its
    wall time against prune nvit's."""
    out = []
    for share in sorted({r["budget_share"] for r in rows}, reverse=True):
        at = {r["method"]: r for r in rows if r["budget_share"] == share}
        if "optimize" not in at:
            continue
        mine, singles = at["optimize"], [r for m, r in at.items() if m != "optimize"]
        best = max(singles, key=lambda r: r["top1"], default=None)
        result = mine["details"]
        seconds = result["seconds"]["total"] - result["seconds"].get("ranking check", 0.0)
        out.append({
            "budget_share": share, "chosen": result["chosen"],
            "top1_minus_best_single": None if best is None else mine["top1"] - best["top1"],
            "best_single": None if best is None else best["method"],
            "within_budget": mine["budget_error_pct"] <= BUDGET_TOLERANCE_PCT,
            "wall_time_vs_prune_nvit": seconds / at["NViT alone"]["seconds"] if "NViT alone" in at else None,
            "rank_correlations": (result.get("ranking_check") or {}).get("correlations"),
        })
    return out


def markdown(result: dict) -> str:
    header = ["budget", "method", "measured ms", "× unpruned", "vs budget", "top-1", "wall time"]
    rows = [[f"{r['budget_share']:g}×", _method_text(r), f"{r['measured_ms']:.2f}", f"{r['measured_ratio']:.3f}",
             f"{r['budget_error_pct']:+.1f} %", f"{100 * r['top1']:.2f} %", f"{r['seconds'] / 60:.1f} min"]
            for r in result["rows"]]
    verdict_rows = [[f"{v['budget_share']:g}×", v["chosen"],
                     "-" if v["top1_minus_best_single"] is None
                     else f"{100 * v['top1_minus_best_single']:+.2f} points vs {v['best_single']}",
                     "yes" if v["within_budget"] else "no",
                     "-" if v["wall_time_vs_prune_nvit"] is None else f"{v['wall_time_vs_prune_nvit']:.1f}×"]
                    for v in result["verdicts"]]
    unpruned = result["unpruned"]
    lines = [
        f"# Latency budgets: {result['model']}, {result['key'][1]} {result['key'][2]}, batch {result['key'][3]}, "
        f"{result['key'][0]}", "",
        f"Unpruned: {unpruned['measured_ms']:.2f} ms measured, top-1 {100 * unpruned['top1']:.2f} %. Every model "
        f"fine-tuned {result['settings']['final_steps']} distilled steps in all; timed interleaved in one run at "
        "the end.", "",
        format_table(header, rows), "",
        *[f"{u['method']} at {u['budget_share']:g}×: no model, {u['reason']}" for u in result["unreachable"]], "",
        format_table(["budget", "optimize chose", "top-1 against the best single method", "within +3 %",
                      "wall time vs prune nvit"], verdict_rows), "",
        *_correlation_lines(result["verdicts"]),
        f"Command: `{result['command']}` ({result['seconds'] / 60:.0f} min)",
    ]
    return "\n".join(lines) + "\n"


def _method_text(row: dict) -> str:
    if row["method"] != "optimize":
        return row["method"]
    return f"optimize ({row['details']['chosen']})"


def _correlation_lines(verdicts: list[dict]) -> list[str]:
    lines = []
    for v in verdicts:
        if v["rank_correlations"]:
            parts = [("before fine-tuning" if c["steps"] == 0 else f"after {c['steps']} steps")
                     + (" n/a" if c["spearman"] is None else f" {c['spearman']:+.2f}") + f" ({c['candidates']})"
                     for c in v["rank_correlations"]]
            lines += [f"Proxy rank correlation with test top-1 at {v['budget_share']:g}× (Spearman, candidates): "
                      + ", ".join(parts), ""]
    return lines


def plot(result: dict) -> bytes:
    series = {method: [(r["measured_ratio"], 100 * r["top1"]) for r in result["rows"] if r["method"] == method]
              for method in METHODS}
    return accuracy_latency_png(
        {method: points for method, points in series.items() if points}, 100 * result["unpruned"]["top1"],
        f"measured latency, × the unpruned model's (batch {result['key'][3]}, {result['key'][1]}, interleaved); "
        "dotted: budgets", "fmnist_vit under latency budgets",
        tuple(sorted({r["budget_share"] for r in result["rows"]})))


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

"""Token merging (ToMe), measured: its speed against its FLOPs on DeiT-S, and on fmnist_vit its
accuracy against measured latency, next to dropping tokens, NViT and the joint optimiser.

    .venv/bin/python benchmarks/tome.py speed            # DeiT-S (seeded random weights), batch 8
    .venv/bin/python benchmarks/tome.py fmnist --lut latency_tables/amd-epyc-onnxruntime-fp32-fmnist_vit-b64.json

``speed``: the unpruned DeiT-S and ToMe at r = 8 and r = 13 (constant schedule), each beside its
twin: the same token counts with the matching replaced by keeping the first tokens, so the gap
between the two is what the matching and the merge cost; and beside the same merge written with
ScatterElements adds instead of one-hot MatMuls. All exported through the checked
exporter and timed interleaved with ONNX Runtime in one process (``--threads``, 1 by default),
``--repeats`` times to show how far runs spread. Efficiency is speedup × FLOPs ratio: 1 when
the speedup is all the FLOPs promise. Writes
benchmarks/results/tome-speed-deit_small_patch16_224-<cpu>-onnxruntime-t<threads>.{json,md}.

``fmnist``: on the trained reference model, ToMe at several constant r with and without a
distilled fine-tune (``--final-steps``); then at each budget (``--budgets`` × the unpruned
latency measured now) ToMe alone for a latency target (fine-tuned the same way) and
``vitdeploy optimize --tokens tome --alone tome,star,patch-slimming``. Every model is timed once
more, interleaved with the unpruned model in one run (the table's backend, batch and threads),
and evaluated on the 10k test images. The single-method and STAR-based optimiser rows of
``latency-budget.json`` (another run, same machine type) are quoted beside them. Writes
benchmarks/results/tome-fmnist.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import accuracy_latency_png

import latency_budget
from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.run import bench_sources
from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import evaluate
from vitdeploy.hardware import cpu_name, device_slug, environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.lut.measure import MEASURE_PLAN, measure_models
from vitdeploy.models.architectures import REFERENCE_MODEL
from vitdeploy.models.flops import total_macs
from vitdeploy.models.token_plan import with_spec
from vitdeploy.models.zoo import load_model
from vitdeploy.prune.methods.tome.config import ToMeConfig
from vitdeploy.prune.methods.tome.schedule import per_block, tome_spec
from vitdeploy.prune.registry import METHODS, PruneContext
from vitdeploy.tables import format_table
from vitdeploy.tokens.merge import bipartite_matching, gather_rows
from vitdeploy.tokens.selectors.tome import TokenMerging

RESULTS = Path(__file__).parent / "results"
DEIT = "deit_small_patch16_224"
DEIT_R = (8, 13)
SWEEP_R = (2, 4, 6, 8)
OTHER_RUN_METHODS = ("NViT alone", "STAR alone", "optimize")


class KeepFirst(TokenMerging):
    """ToMe's token counts without its matching: the block keeps its first N − r tokens."""

    def merge(self, block, x, keys, sizes, selection):
        n = x.shape[1] - (block.patch_tokens_in - block.step.keep)
        sizes = torch.ones(x.shape[:2], dtype=x.dtype) if sizes is None else sizes
        return x[:, :n], sizes[:, :n]


class ScatterAdd(TokenMerging):
    """ToMe with the moves added to their partners by ScatterElements (``add`` reduction) instead of
    one-hot MatMuls: the form that TensorRT runs only through a plugin, timed on ONNX Runtime."""

    def merge(self, block, x, keys, sizes, selection):
        matching = bipartite_matching(keys, block.patch_tokens_in - block.step.keep, block.num_prefix, selection)
        sizes = torch.ones(x.shape[:2], dtype=x.dtype) if sizes is None else sizes
        source_sizes = sizes.gather(1, matching.sources)
        new_sizes = sizes.gather(1, matching.kept).scatter_add(1, matching.targets, source_sizes)
        tokens = gather_rows(x, matching.kept)
        weights = (source_sizes / new_sizes.gather(1, matching.targets)).unsqueeze(-1)
        moves = weights * (gather_rows(x, matching.sources) - gather_rows(tokens, matching.targets))
        return tokens.scatter_add(1, matching.targets.unsqueeze(-1).expand_as(moves), moves), new_sizes


def twin(model, selector: type[TokenMerging] = KeepFirst):
    """``model`` (a ToMe plan) with every merge done by ``selector``."""
    twin_model = with_spec(model, model.spec)
    for block in twin_model.blocks:
        if block.merges:
            block.token_selector = selector()
    return twin_model


# --- speed ------------------------------------------------------------------------------------------

def speed(args) -> None:
    torch.set_num_threads(args.threads)
    base = load_model(DEIT)
    models = {"unpruned": base}
    for r in DEIT_R:
        merged = with_spec(base, tome_spec(base.spec, per_block(r, base.spec.depth, "constant")))
        models[f"tome r={r}"], models[f"keep-first twin r={r}"] = merged, twin(merged)
        models[f"scatter-add merge r={r}"] = twin(merged, ScatterAdd)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {name: ModelSource(f"model-{i}", tmp, model=m) for i, (name, m) in enumerate(models.items())}
        for _ in range(args.repeats):
            result = bench_sources(sources, "onnxruntime", BuildConfig(batch_sizes=(args.batch,), threads=args.threads),
                                   TimingPlan(warmup=3, iters=args.iters, rounds=args.rounds), progress=True)
            runs.append({row["model"]: row["median_ms"] for row in result.rows})
    rows = [_speed_row(name, models, runs) for name in models if name != "unpruned"]
    summary = {"model": DEIT, "batch": args.batch, "threads": args.threads, "repeats": args.repeats,
               "unpruned_ms": statistics.median(run["unpruned"] for run in runs), "rows": rows, "runs_ms": runs,
               "command": f"python benchmarks/tome.py speed --batch {args.batch} --threads {args.threads} "
                          f"--iters {args.iters} --rounds {args.rounds} --repeats {args.repeats}",
               "environment": environment(args.threads), "bench": result.to_dict()}
    stem = RESULTS / f"tome-speed-{DEIT}-{device_slug(cpu_name())}-onnxruntime-t{args.threads}"
    write_json_atomic(stem.with_suffix(".json"), summary)
    write_bytes_atomic(stem.with_suffix(".md"), speed_markdown(summary).encode())
    print(speed_markdown(summary))


def _speed_row(name: str, models: dict, runs: list[dict]) -> dict:
    """Each figure per run, then its median over the runs (and the range of the two that matter)."""
    flops_ratio = total_macs(models[name].spec) / total_macs(models["unpruned"].spec)
    efficiency = [run["unpruned"] / run[name] * flops_ratio for run in runs]
    row = {"model": name, "median_ms": statistics.median(run[name] for run in runs), "flops_ratio": flops_ratio,
           "speedup": statistics.median(run["unpruned"] / run[name] for run in runs),
           "efficiency": statistics.median(efficiency), "efficiency_range": [min(efficiency), max(efficiency)]}
    if name.startswith("tome"):
        twin_name = name.replace("tome", "keep-first twin")
        share = [(run[name] - run[twin_name]) / run[name] for run in runs]
        row.update(matching_share=statistics.median(share), matching_share_range=[min(share), max(share)])
    return row


def speed_markdown(summary: dict) -> str:
    def spread(row: dict, key: str, scale: float = 1, digits: int = 2, unit: str = "") -> str:
        low, high = (scale * value for value in row[f"{key}_range"])
        return f"{scale * row[key]:.{digits}f}{unit} ({low:.{digits}f} to {high:.{digits}f})"

    rows = [[r["model"], f"{r['median_ms']:.1f}", f"{r['flops_ratio']:.3f}", f"{r['speedup']:.2f}×",
             spread(r, "efficiency"), spread(r, "matching_share", 100, 1, " %") if "matching_share" in r else ""]
            for r in summary["rows"]]
    return "\n".join([
        f"# ToMe speed: {summary['model']} (random weights), batch {summary['batch']}, ONNX Runtime CPU, "
        f"{summary['threads']} threads", "",
        f"{summary['repeats']} interleaved runs; each figure is the median over the runs, with the lowest and highest "
        f"in brackets. Unpruned: {summary['unpruned_ms']:.1f} ms. Efficiency = speedup × FLOPs ratio (1: the speedup "
        "is all the FLOPs promise). Matching share: (ToMe − its keep-first twin) / ToMe, the time the matching and "
        "merge take.",
        "", format_table(["model", "median ms", "FLOPs ratio", "speedup", "efficiency", "matching share"], rows), "",
        f"Command: `{summary['command']}`", ""])


# --- fmnist -----------------------------------------------------------------------------------------

def fmnist(args) -> None:
    started = time.perf_counter()
    base, table, drift, train, test = latency_budget.reference_setup(args)
    models, rows, unreachable = {"unpruned": base}, [], []

    def add(name: str, row: dict, model) -> None:
        models[name] = model
        rows.append({"name": name, **row})

    for r in SWEEP_R:
        merged, report = METHODS.get("tome").prune(base, ToMeConfig(r=r), PruneContext(data=None, progress=False))
        add(f"ToMe r={r}", {"method": "ToMe", "r": r, "fine_tuned": False, "details": report}, merged)
        tuned = copy.deepcopy(merged)
        add(f"ToMe r={r} + fine-tune", {"method": "ToMe + fine-tune", "r": r, "fine_tuned": True, "details": {
            "fine_tune": latency_budget.fine_tuned(tuned, base, train, args)}}, tuned)
    with tempfile.TemporaryDirectory(prefix="tome-fmnist-") as work:
        for share in (float(s) for s in args.budgets.split(",")):
            runs = {"ToMe alone": lambda: tome_alone(base, latency_budget.budget_now(base, share, args), args, train),
                    "optimize --tokens tome": lambda: optimized(base, share, args, Path(work))}
            for method, make in runs.items():
                try:
                    model, details, seconds = make()
                except VitDeployError as exc:
                    unreachable.append({"method": method, "budget_share": share, "reason": str(exc)})
                    continue
                add(f"{method} @ {share:g}x", {"method": method, "budget_share": share, "seconds": round(seconds, 1),
                                               "details": details}, model)
        measured = measure_models(models, table.metadata, MEASURE_PLAN, progress=True)
    for row in rows:
        model = models[row["name"]]
        row.update(measured_ms=measured[row["name"]], measured_ratio=measured[row["name"]] / measured["unpruned"],
                   flops_ratio=total_macs(model.spec) / total_macs(base.spec), top1=evaluate(model, test))
    result = {"model": REFERENCE_MODEL, "table": args.lut, "key": list(table.key), "drift": drift.to_dict(),
              "unpruned": {"measured_ms": measured["unpruned"], "top1": evaluate(base, test)},
              "settings": vars(args), "rows": rows, "unreachable": unreachable, "other_run": other_run_rows(),
              "command": "python benchmarks/tome.py fmnist " + " ".join(sys.argv[2:]),
              "environment": environment(args.threads), "seconds": round(time.perf_counter() - started, 1)}
    stem = RESULTS / "tome-fmnist"
    write_json_atomic(stem.with_suffix(".json"), result)
    write_bytes_atomic(stem.with_suffix(".md"), fmnist_markdown(result).encode())
    write_bytes_atomic(stem.with_suffix(".png"), fmnist_plot(result))
    print(fmnist_markdown(result))


@latency_budget.timed
def tome_alone(base, budget_ms: float, args, train) -> tuple[object, dict]:
    config = ToMeConfig(target_latency_ms=budget_ms, lut=args.lut)
    model, report = METHODS.get("tome").prune(base, config, PruneContext(data=None, progress=True))
    report["fine_tune"] = latency_budget.fine_tuned(model, base, train, args)
    return model, report


@latency_budget.timed
def optimized(base, share: float, args, work: Path) -> tuple[object, dict]:
    return latency_budget.optimize_at(base, share, args, work, tokens="tome", alone="tome,star,patch-slimming")


def other_run_rows() -> list[dict]:
    """The fine-tuned single methods and STAR-based optimiser of latency-budget.json."""
    other = json.loads((RESULTS / "latency-budget.json").read_text())
    return [{"name": r["name"], "method": r["method"], "budget_share": r["budget_share"],
             "measured_ratio": r["measured_ratio"], "top1": r["top1"],
             "chosen": r["details"].get("chosen") if r["method"] == "optimize" else None}
            for r in other["rows"] if r["method"] in OTHER_RUN_METHODS]


def fmnist_markdown(result: dict) -> str:
    unpruned = result["unpruned"]
    sweep = [[r["name"], f"{r['flops_ratio']:.3f}", f"{r['measured_ratio']:.3f}", f"{100 * r['top1']:.2f} %"]
             for r in result["rows"] if "r" in r]
    budget_rows = [[f"{r['budget_share']:g}×", _method_text(r), f"{r['measured_ratio']:.3f}",
                    f"{100 * r['top1']:.2f} %", "this run"] for r in result["rows"] if "budget_share" in r]
    budget_rows += [[f"{r['budget_share']:g}×", r["method"] + (f" ({r['chosen']})" if r["chosen"] else ""),
                     f"{r['measured_ratio']:.3f}", f"{100 * r['top1']:.2f} %", "latency-budget.json"]
                    for r in result["other_run"]]
    budget_rows.sort(key=lambda row: -float(row[0].rstrip("×")))
    return "\n".join([
        f"# ToMe on {result['model']}: {result['key'][1]} {result['key'][2]}, batch {result['key'][3]}, "
        f"{result['key'][0]}", "",
        f"Unpruned: {unpruned['measured_ms']:.2f} ms measured, top-1 {100 * unpruned['top1']:.2f} %. Latency is a "
        "ratio to the unpruned model timed interleaved in the same run; fine-tunes are "
        f"{result['settings']['final_steps']} distilled steps.", "",
        "## Constant r, with and without a fine-tune", "",
        format_table(["model", "FLOPs ratio", "measured × unpruned", "top-1"], sweep), "",
        "## Under latency budgets", "",
        format_table(["budget", "method", "measured × unpruned", "top-1", "from"], budget_rows), "",
        *[f"{u['method']} at {u['budget_share']:g}×: no model, {u['reason']}" for u in result["unreachable"]], "",
        f"Command: `{result['command']}` ({result['seconds'] / 60:.0f} min)", ""])


def _method_text(row: dict) -> str:
    if row["method"] != "optimize --tokens tome":
        return row["method"]
    return f"optimize --tokens tome ({row['details']['chosen']})"


def fmnist_plot(result: dict) -> bytes:
    series = {}
    for r in result["rows"]:
        series.setdefault(r["method"], []).append((r["measured_ratio"], 100 * r["top1"]))
    for r in result["other_run"]:
        series.setdefault(f"{r['method']} (latency-budget run)", []).append((r["measured_ratio"], 100 * r["top1"]))
    return accuracy_latency_png(series, 100 * result["unpruned"]["top1"],
                                f"measured latency, × the unpruned model's (batch {result['key'][3]}, "
                                f"{result['key'][1]})", "fmnist_vit: merging tokens against dropping them")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    speed_parser = sub.add_parser("speed")
    speed_parser.add_argument("--batch", type=int, default=8)
    speed_parser.add_argument("--threads", type=int, default=1,
                              help="ONNX Runtime threads (1: steadier on a VM, see docs/latency.md)")
    speed_parser.add_argument("--iters", type=int, default=20)
    speed_parser.add_argument("--rounds", type=int, default=4)
    speed_parser.add_argument("--repeats", type=int, default=1, help="interleaved runs, to show how far they spread")
    fmnist_parser = sub.add_parser("fmnist")
    fmnist_parser.add_argument("--lut", required=True, help="latency table measured for fmnist_vit")
    fmnist_parser.add_argument("--budgets", default="0.7,0.5,0.35")
    fmnist_parser.add_argument("--final-steps", type=int, default=300)
    fmnist_parser.add_argument("--threads", type=int, default=2)
    fmnist_parser.add_argument("--test-limit", type=int, default=None)
    args = parser.parse_args(argv)
    (speed if args.part == "speed" else fmnist)(args)


if __name__ == "__main__":
    main(sys.argv[1:])

"""SPViT soft token pruning on the shipped Fashion-MNIST model, against static token methods at
equal FLOPs, with ablations (no package token, single-head selector).

    .venv/bin/python benchmarks/spvit_fmnist.py

CPU budget (2 shared cores): every SPViT run trains 3 epochs on the first 10k train images
(not the 60k), batch 64, one thread, with λ_ratio = 10 (``spvit-ratio-2``: the paper's 2, at
which these short runs overshoot their keep targets; see ``SPViTConfig.lambda_ratio``). The best
epoch is chosen on train images 55000..59999 (outside SPViT's training subset, though the
shipped model saw them in its own training), and
top-1 is then measured on the full 10k test split. Baselines choose a token plan for the
shipped weights at the FLOPs ratio the SPViT run reached, without training (STAR, uniform and
class-attention top-k, as in benchmarks/token_pruning_fmnist.py; ``cls-attn`` drops tokens after
the same blocks as SPViT). ``cls-attn+ft`` is that class-attention plan fine-tuned with SPViT's
steps, backbone learning rate and logit distillation, which separates the learned selection from
the fine-tuning. Every static SPViT model is exported with ``export_onnx`` (audit + parity, on
random-normal inputs and on 64 test images).
Checkpoints go to ``--work`` (default /tmp/vitdeploy-spvit-bench), so an interrupted run resumes.
Writes benchmarks/results/spvit-fmnist.{json,md,png}.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from common import accuracy_flops_png
from torch.utils.data import Subset

from vitdeploy.errors import VitDeployError
from vitdeploy.data import dataset_for
from vitdeploy.evaluate import evaluate
from vitdeploy.export.config import ExportConfig
from vitdeploy.export.onnx import export_onnx
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.zoo import load_model
from vitdeploy.prune.calibrate import calibration_images
from vitdeploy.prune.methods.spvit.algorithm import prune_spvit
from vitdeploy.prune.methods.spvit.config import SPViTConfig
from vitdeploy.prune.token_config import token_config
from vitdeploy.prune.token_methods import prune_tokens
from vitdeploy.tables import format_table
from vitdeploy.train.config import TrainConfig
from vitdeploy.train.loop import fine_tune

RESULTS = Path(__file__).parent / "results"
STEM = "spvit-fmnist"
BUDGETS = (0.7, 0.5)
VALIDATION = range(55000, 60000)
CALIB_SIZE, SEED = 512, 0
BASE = SPViTConfig(epochs=3, batch_size=64, limit=10000, threads=1, seed=SEED, lambda_ratio=10.0)
VARIANTS = {
    "spvit": {},
    "spvit-ratio-2": {"lambda_ratio": 2.0},
    "spvit-no-package": {"package": False},
    "spvit-1-head": {"selector_heads": 1},
}
BASELINES = {
    "star": token_config("star"),
    "uniform": token_config("uniform"),
    "cls-attn": token_config("cls-attn"),
}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(BASE.threads)
    model = load_model("fmnist_vit")
    train_full = dataset_for(model, "fashion-mnist", "train")
    validation, test_set = Subset(train_full, VALIDATION), dataset_for(model, "fashion-mnist", "test")
    images = calibration_images(model, "fashion-mnist", CALIB_SIZE, SEED)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for budget in BUDGETS:
            for name, overrides in VARIANTS.items():
                config = replace(BASE, budget_flops=budget, **overrides)
                rows.append(spvit_row(model, name, config, train_full, validation, test_set,
                                      args.work / f"{name}-{budget}", Path(tmp)))
                log(rows[-1])
            spvit = rows[-len(VARIANTS)]
            blocks = ",".join(str(p["after_block"]) for p in spvit["phases"])
            for name, config in BASELINES.items():
                config = replace(config, target_flops=spvit["flops_ratio"],
                                 blocks=blocks if config.method == "cls-attn" else None)
                rows.append(baseline_row(model, name, config, images, test_set, budget))
                log(rows[-1])
            rows.append(fine_tuned_row(model, spvit, train_full, test_set, budget))
            log(rows[-1])
    result = {"model": "fmnist_vit", "baseline_top1": evaluate(model, test_set), "budgets": list(BUDGETS),
              "spvit_settings": asdict(BASE), "validation_images": [VALIDATION.start, VALIDATION.stop],
              "calib_size": CALIB_SIZE, "rows": rows, "seconds": round(time.perf_counter() - started, 1),
              "command": "python " + shlex.join(["benchmarks/spvit_fmnist.py", *sys.argv[1:]])}
    write_json_atomic(RESULTS / f"{STEM}.json", result)
    write_bytes_atomic(RESULTS / f"{STEM}.md", (markdown(result) + "\n").encode())
    write_bytes_atomic(RESULTS / f"{STEM}.png", plot(result))
    print(markdown(result))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitdeploy-spvit-bench"),
                        help="checkpoint directories, one per SPViT run (reruns resume from them)")
    return parser.parse_args()


def spvit_row(model, name, config, train_set, validation, test_set, work: Path, tmp: Path) -> dict:
    pruned, report = prune_spvit(model, config, train_set, validation, work, progress=False)
    exports = {selection: export_result(pruned, tmp / f"{name}-{selection}.onnx", selection)
               for selection in ("topk", "rank")}
    return {"method": name, "budget": config.budget_flops, "flops_ratio": report["flops_ratio"],
            "top1": evaluate(pruned, test_set), "validation_top1": report["top1"], "keep": report["keep"],
            "phases": report["phases"], "best_epoch": report["best_epoch"], "history": report["history"],
            "train_seconds": report["train_seconds"], "config": report["config"],
            "export": exports}


def export_result(model, path: Path, selection: str) -> dict:
    """The checked export with parity on random-normal inputs (the default) and on 64 test images:
    the selectors can score noise so evenly that float rounding flips a top-k choice."""
    results = {}
    for inputs, config in (("noise", ExportConfig(selection=selection)),
                           ("images", ExportConfig(selection=selection, parity_data="fashion-mnist",
                                                   parity_batches=(1, 64)))):
        try:
            exported = export_onnx(model, path, config)
        except VitDeployError as exc:
            results[inputs] = {"passed": False, "error": str(exc).split(". ")[0]}
            continue
        results[inputs] = {"passed": True, "audit_passed": exported.audit.passed,
                           "parity_max_abs_diff": exported.parity.max_abs_diff}
    return results


def baseline_row(model, name, config, images, test_set, budget) -> dict:
    """A training-free plan at the target FLOPs, or a row saying why the method cannot reach it."""
    try:
        _, report = prune_tokens(model, config, images, test_set, progress=False)
    except VitDeployError as exc:
        return {"method": name, "budget": budget, "flops_ratio": None, "top1": None, "unreachable": str(exc)}
    return {"method": name, "budget": budget, "flops_ratio": report["flops_ratio"], "top1": report["top1"],
            "keep": report["keep"], "fine_tuned": False}


def fine_tuned_row(model, spvit: dict, train_full, test_set, budget, settings: SPViTConfig = BASE) -> dict:
    """Class-attention top-k at SPViT's blocks, fine-tuned with the steps, backbone lr and KL weight
    of an SPViT run with ``settings``."""
    blocks = ",".join(str(p["after_block"]) for p in spvit["phases"])  # the cls-attn baseline's blocks too
    config = token_config("cls-attn", blocks=blocks, target_flops=spvit["flops_ratio"])
    pruned, report = prune_tokens(model, config, None, None, progress=False)
    steps = settings.epochs * math.ceil(settings.limit / settings.batch_size)
    train = TrainConfig(lr=settings.lr_backbone, min_lr=0.0, warmup_epochs=0.0, weight_decay=settings.weight_decay,
                        distill_weight=settings.lambda_kl, seed=SEED, threads=settings.threads,
                        batch_size=settings.batch_size)
    tuned = fine_tune(pruned, Subset(train_full, range(settings.limit)), train, steps, teacher=model)
    return {"method": "cls-attn+ft", "budget": budget, "flops_ratio": report["flops_ratio"],
            "top1": evaluate(pruned, test_set), "keep": report["keep"], "fine_tuned": True, "blocks": blocks,
            "fine_tune": tuned}


def log(row: dict) -> None:
    print(f"{row['budget']:.2f} {row['method']:18s} {cell(row)}", file=sys.stderr, flush=True)


def cell(row: dict) -> str:
    if row["top1"] is None:
        return "unreachable"
    return f"{row['top1'] * 100:.2f} ({row['flops_ratio']:.3f}×)"


def markdown(result: dict) -> str:
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    table = []
    for budget in result["budgets"]:
        cells = {r["method"]: r for r in result["rows"] if r["budget"] == budget}
        table.append([f"{budget:.2f}×", *(cell(cells[m]) for m in methods)])
    s = result["spvit_settings"]
    return (f"Top-1 % on the Fashion-MNIST test split (FLOPs ratio in brackets); unpruned "
            f"{result['baseline_top1'] * 100:.2f} %. SPViT variants train {s['epochs']} epochs on {s['limit']} "
            f"train images; star/uniform/cls-attn are training-free; cls-attn+ft is fine-tuned like SPViT; 'unreachable': "
            f"the method's fewest FLOPs are above the target.\n\n"
            + format_table(["budget", *methods], table) + "\n\n" + export_line(result["rows"]))


def export_line(rows: list[dict]) -> str:
    exports = [e for r in rows if "export" in r for e in r["export"].values()]
    passed = {inputs: sum(e[inputs]["passed"] for e in exports) for inputs in ("noise", "images")}
    return (f"Static SPViT exports (TopK and rank selection) passing audit + parity ≤ 1e-4: {passed['images']}/"
            f"{len(exports)} on 64 test images, {passed['noise']}/{len(exports)} on random-normal inputs.")


def plot(result: dict) -> bytes:
    series: dict[str, list[tuple[float, float]]] = {}
    for r in result["rows"]:
        if r["top1"] is not None:
            series.setdefault(r["method"], []).append((r["flops_ratio"], r["top1"] * 100))
    return accuracy_flops_png(series, result["baseline_top1"] * 100, "SPViT vs static token pruning, fmnist_vit")


if __name__ == "__main__":
    main()

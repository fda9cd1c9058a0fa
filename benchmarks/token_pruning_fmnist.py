"""Top-1 against FLOPs for every static token-pruning method on the shipped Fashion-MNIST model.

    .venv/bin/python benchmarks/token_pruning_fmnist.py

No fine-tuning: each method only chooses a token plan for the shipped weights (88.92 % top-1).
Calibration uses 512 seeded train images; top-1 is on the full 10k test split. Every static plan
is also exported through the checked exporter (audit + ONNX Runtime parity). a-STAR runs at the
ρ that STAR found for each level, so its FLOPs are the mean over the test images (≤ STAR's).
``star-intra`` is STAR's ACS schedule with α = 1 (class attention only): the paper's ablation.
Writes benchmarks/results/token-pruning-fmnist.{json,md,png}.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import accuracy_flops_png

from vitdeploy.errors import VitDeployError
from vitdeploy.data import dataset_for
from vitdeploy.evaluate import evaluate
from vitdeploy.export.onnx import export_onnx
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.zoo import load_model
from vitdeploy.prune.calibrate import calibration_images
from vitdeploy.prune.token_config import token_config
from vitdeploy.prune.token_methods import prune_tokens
from vitdeploy.tables import format_table

RESULTS = Path(__file__).parent / "results"
STEM = "token-pruning-fmnist"
LEVELS = (0.9, 0.75, 0.6, 0.5)
"""STAR's schedule cannot go below 0.47× on this 6-block model (ρ → 0), so the lowest level is 0.5×."""
CALIB_SIZE, SEED = 512, 0
METHODS = {
    "patch-slimming": token_config("patch-slimming"),
    "star": token_config("star"),
    "star-intra": token_config("star", alpha=1.0),
    "uniform": token_config("uniform"),
    "cls-attn": token_config("cls-attn"),
    "cls-attn+package": token_config("cls-attn", package=True),
    "random": token_config("random"),
}


def run_point(model, name, config, images, test_set, baseline_top1: float, work: Path) -> dict:
    try:
        pruned, report = prune_tokens(model, config, images, test_set, progress=False, baseline_top1=baseline_top1)
    except VitDeployError as exc:  # e.g. a FLOPs level that this method's schedule cannot reach
        return {"method": name, "target_flops": config.target_flops, "error": str(exc)}
    row = {"method": name, "target_flops": config.target_flops, "flops_ratio": report["flops_ratio"],
           "top1": report["top1"], "keep": report["keep"], "calibration_seconds": report["calibration_seconds"],
           "knob": {k: report[k] for k in ("rho", "epsilon", "rate") if k in report}, "spec": pruned.spec.to_dict()}
    if pruned.spec.adaptive:
        row["flops_ratio"] = report["adaptive_flops_ratio"]
        row["static_upper_bound_flops_ratio"] = report["flops_ratio"]
        return row
    exported = export_onnx(pruned, work / f"{name}-{config.target_flops}.onnx")
    row["export"] = {"audit_passed": exported.audit.passed, "parity_max_abs_diff": exported.parity.max_abs_diff,
                     "ops": sorted(op for op in exported.audit.op_counts if op in ("TopK", "Gather", "GatherElements"))}
    return row


def main() -> None:
    torch.set_num_threads(1)  # accuracy only: one thread shares the 2-core machine without spin-waiting
    model = load_model("fmnist_vit")
    images = calibration_images(model, "fashion-mnist", CALIB_SIZE, SEED)
    test_set = dataset_for(model, "fashion-mnist", "test")
    rows, started, baseline_top1 = [], time.perf_counter(), evaluate(model, test_set)
    with tempfile.TemporaryDirectory() as tmp:
        for level in LEVELS:
            for name, config in METHODS.items():
                config = replace(config, target_flops=level)
                rows.append(run_point(model, name, config, images, test_set, baseline_top1, Path(tmp)))
                print(f"{level:.2f} {name:18s} {rows[-1]}"[:120], file=sys.stderr)
            star = next(r for r in rows if r["method"] == "star" and r["target_flops"] == level)
            if "knob" in star:
                astar = token_config("a-star", rho=star["knob"]["rho"])
                rows.append({**run_point(model, "a-star", astar, images, test_set, baseline_top1, Path(tmp)),
                             "target_flops": level})
    result = {"model": "fmnist_vit", "baseline_top1": baseline_top1, "calib_size": CALIB_SIZE,
              "seed": SEED, "levels": list(LEVELS), "rows": rows, "seconds": round(time.perf_counter() - started, 1),
              "command": "python benchmarks/token_pruning_fmnist.py"}
    write_json_atomic(RESULTS / f"{STEM}.json", result)
    write_bytes_atomic(RESULTS / f"{STEM}.md", (markdown(result) + "\n").encode())
    write_bytes_atomic(RESULTS / f"{STEM}.png", plot(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    headers = ["target FLOPs", *methods]
    table = []
    for level in result["levels"]:
        cells = {r["method"]: r for r in result["rows"] if r["target_flops"] == level}
        table.append([f"{level:.2f}×", *(_cell(cells[m]) for m in methods)])
    return (f"Top-1 % on the Fashion-MNIST test split (actual FLOPs ratio in brackets), no fine-tuning; "
            f"unpruned {result['baseline_top1'] * 100:.2f} %.\n\n" + format_table(headers, table))


def _cell(row: dict) -> str:
    return "unreachable" if "error" in row else f"{row['top1'] * 100:.2f} ({row['flops_ratio']:.2f}×)"


def plot(result: dict) -> bytes:
    series: dict[str, list[tuple[float, float]]] = {}
    for r in result["rows"]:
        if "error" not in r:
            series.setdefault(r["method"], []).append((r["flops_ratio"], r["top1"] * 100))
    return accuracy_flops_png(series, result["baseline_top1"] * 100, "Token pruning without fine-tuning, fmnist_vit")


if __name__ == "__main__":
    main()

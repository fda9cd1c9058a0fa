"""NViT on the Fashion-MNIST reference model, CPU only: accuracy and structure, no timings.

    .venv/bin/python benchmarks/nvit_fmnist.py

1. Hessian vs magnitude as the global criterion: one iterative NViT run per criterion down to
   the smallest FLOPs level, snapshotted at every level (0.7×, 0.5×, 0.35×). Each snapshot is
   fine-tuned (distilled from the original) and evaluated on the 10k test set: top-1 right after
   pruning and after the fine-tune, per-block dims, parameters, MACs, compaction error, and an
   ONNX export with its audit and parity check.
2. 2:4 on top of NViT: NViT to 0.5× with every dim a multiple of 16, fine-tuned; then 2:4
   magnitude masks, top-1 before and after a short sparse fine-tune, and the pattern verified
   on the exported ONNX initializers. The same on the unpruned model for reference.

Calibration and fine-tuning draw from the train split; each fine-tune sees ``--final-steps``
batches of 128 (400 by default, under one epoch). Writes benchmarks/results/nvit-fmnist.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from vitdeploy.hardware import environment
from vitdeploy.data import dataset_for
from vitdeploy.evaluate import evaluate
from vitdeploy.export.onnx import export_onnx
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.flops import total_macs
from vitdeploy.models.vit import ViT
from vitdeploy.models.architectures import REFERENCE_MODEL
from vitdeploy.models.zoo import load_model
from vitdeploy.prune.sparsity import preserve_24, sparsify_24, verify_24_onnx
from vitdeploy.prune.methods.nvit.structural import NViTConfig, NViTPruner, dims_summary, param_count
from vitdeploy.tables import format_table

RESULTS = Path(__file__).parent / "results"
CRITERIA = ("hessian", "magnitude")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="0.7,0.5,0.35", help="FLOPs ratios, decreasing")
    parser.add_argument("--sparse-level", type=float, default=0.5, help="FLOPs ratio of the NViT model under 2:4")
    parser.add_argument("--final-steps", type=int, default=400, help="steps of every final and 2:4 fine-tune")
    parser.add_argument("--finetune-steps", type=int, default=40, help="fine-tune steps after each pruning step")
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--eta", type=float, default=NViTConfig.eta)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when sharing the CPU)")
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    parser.add_argument("--name", default="nvit-fmnist", help="results file stem under benchmarks/results/")
    return parser.parse_args(argv)


def accuracy_vs_flops(model: ViT, config: NViTConfig, levels: list[float], train_set, test_set,
                      final_steps: int) -> dict:
    """One NViT run down to ``levels[-1]``, each level's snapshot fine-tuned and evaluated."""
    started = time.perf_counter()
    pruner = NViTPruner(model, config, train_set, progress=True)
    rows = []
    for index, level in enumerate(levels):
        snapshot = copy.deepcopy(pruner.prune_to(level))
        pruned_top1 = evaluate(snapshot, test_set)
        tune = pruner.fine_tune(snapshot, final_steps, f"final fine-tune {level}", seed_offset=100 + index)
        report = pruner.report(snapshot)
        rows.append({
            "level": level, "macs_ratio": report["macs"]["ratio"], "macs": report["macs"]["after"],
            "params": report["params"]["after"], "params_ratio": report["params"]["ratio"],
            "dims": report["dims"]["after"], "top1_pruned": pruned_top1, "top1": evaluate(snapshot, test_set),
            "compaction_max_abs_diff": report["compaction_max_abs_diff"], "prune_steps": len(pruner.steps),
            "final_finetune": tune, "export": export_check(snapshot),
        })
        print(f"{config.criterion} {level}: {rows[-1]['macs_ratio']:.3f}× MACs, top-1 {pruned_top1:.4f} → "
              f"{rows[-1]['top1']:.4f}", file=sys.stderr)
    return {"criterion": config.criterion, "config": asdict(config), "levels": rows, "steps": pruner.steps,
            "seconds": round(time.perf_counter() - started, 1)}


def sparse_on_top(model: ViT, name: str, config: NViTConfig, train_set, test_set, final_steps: int,
                  prune: bool = True) -> dict:
    """NViT-prune and fine-tune (unless ``prune`` is off), then 2:4 + sparse fine-tune; verify the ONNX pattern."""
    started = time.perf_counter()
    teacher = model
    tuner = NViTPruner(model, config, train_set, progress=True)
    dense = tuner.model
    if prune:
        dense = tuner.prune_to(config.target_flops)
        tuner.fine_tune(dense, final_steps, "final fine-tune", seed_offset=100)
    sparse, sparse_report = sparsify_24(dense)
    row = {"model": name, "dims": dims_summary(dense.spec), "macs_ratio": total_macs(dense.spec) / total_macs(
        teacher.spec), "params": param_count(dense), "top1_dense": evaluate(dense, test_set),
        "top1_24": evaluate(sparse, test_set), "sparsify": sparse_report}
    with preserve_24(sparse):
        row["sparse_finetune"] = tuner.fine_tune(sparse, final_steps, "2:4 fine-tune", seed_offset=200)
    row["top1_24_finetuned"] = evaluate(sparse, test_set)
    row["export"] = export_check(sparse, verify=True)
    row["seconds"] = round(time.perf_counter() - started, 1)
    print(f"2:4 on {name}: {row['top1_dense']:.4f} → {row['top1_24']:.4f} → {row['top1_24_finetuned']:.4f}, "
          f"ONNX pattern {'verified' if row['export']['onnx_24']['verified'] else 'BROKEN'}", file=sys.stderr)
    return row


def export_check(model: ViT, verify: bool = False) -> dict:
    """Export through the foundation's checks; with ``verify``, check 2:4 on the ONNX initializers."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        report = export_onnx(model, path)
        result = {"audit_passed": report.audit.passed, "parity_max_abs_diff": report.parity.max_abs_diff}
        if verify:
            onnx_24 = verify_24_onnx(path)
            result["onnx_24"] = {"sparse_initializers": len(onnx_24["sparse"]),
                                 "dense_initializers": len(onnx_24["dense"]),
                                 "verified": len(onnx_24["sparse"]) == 4 * model.spec.depth}
    return result


def markdown(results: dict) -> str:
    base = results["baseline"]
    rows = [["unpruned", "-", 1.0, base["params"], "-", base["top1"]]]
    for run in results["criteria"]:
        rows += [[run["criterion"], r["level"], r["macs_ratio"], r["params"], r["top1_pruned"], r["top1"]]
                 for r in run["levels"]]
    accuracy = format_table(["criterion", "target", "MACs ratio", "params", "top-1 pruned", "top-1 fine-tuned"], rows)
    dims = format_table(
        ["criterion", "MACs ratio", "embed", "per block: heads×qk/v, mlp"],
        [[run["criterion"], r["macs_ratio"], r["dims"]["embed_dim"],
          " · ".join(f"{b['heads']}×{b['qk_dim']}/{b['v_dim']}, {b['mlp_dim']}" for b in r["dims"]["blocks"])]
         for run in results["criteria"] for r in run["levels"]])
    sparse = format_table(
        ["model", "MACs ratio", "embed", "top-1 dense", "top-1 2:4", "top-1 2:4 fine-tuned", "ONNX 2:4 layers"],
        [[s["model"], s["macs_ratio"], s["dims"]["embed_dim"], s["top1_dense"], s["top1_24"], s["top1_24_finetuned"],
          s["export"]["onnx_24"]["sparse_initializers"]] for s in results["sparse_24"]])
    return f"{accuracy}\n\n{dims}\n\n{sparse}\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    base = results["baseline"]["top1"]
    left.axhline(base, color="grey", linestyle=":", label=f"unpruned ({base:.4f})")
    for run, color in zip(results["criteria"], ("tab:blue", "tab:red")):
        x = [r["macs_ratio"] for r in run["levels"]]
        left.plot(x, [r["top1"] for r in run["levels"]], "o-", color=color, label=f"{run['criterion']}, fine-tuned")
        left.plot(x, [r["top1_pruned"] for r in run["levels"]], "x--", color=color, alpha=0.6,
                  label=f"{run['criterion']}, before fine-tune")
    for s in results["sparse_24"]:
        left.plot([s["macs_ratio"]], [s["top1_24_finetuned"]], "s", label=f"2:4 on {s['model']}, fine-tuned")
    left.set(xlabel="MACs / unpruned MACs", ylabel="top-1 (Fashion-MNIST test)", title="NViT on fmnist_vit")
    left.legend(fontsize=7)
    mid = results["criteria"][0]["levels"][len(results["criteria"][0]["levels"]) // 2]["level"]
    width = 0.2
    for run, color, shift in zip(results["criteria"], ("tab:blue", "tab:red"), (0, width)):
        row = next(r for r in run["levels"] if r["level"] == mid)
        blocks = row["dims"]["blocks"]
        right.bar([i + 1 - 1.5 * width + shift for i in range(len(blocks))], [b["mlp_dim"] for b in blocks], width,
                  color=color, alpha=0.5, label=f"{run['criterion']} MLP (embed {row['dims']['embed_dim']})")
        right.bar([i + 1 + 0.5 * width + shift for i in range(len(blocks))],
                  [b["heads"] * b["qk_dim"] for b in blocks], width, color=color, label=f"{run['criterion']} heads×qk")
    right.set(xlabel="block", ylabel="width", title=f"per-block dims at {mid}× FLOPs (unpruned: 256, 4×16)")
    right.legend(fontsize=7)
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(suffix=".png") as tmp:
        fig.savefig(tmp.name, dpi=120)
        write_bytes_atomic(path, Path(tmp.name).read_bytes())


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    levels = [float(v) for v in args.levels.split(",")]
    model = load_model(REFERENCE_MODEL)
    train_set = dataset_for(model, "fashion-mnist", "train")
    test_set = dataset_for(model, "fashion-mnist", "test", limit=args.test_limit)
    common = {"finetune_steps": args.finetune_steps, "calib_batches": args.calib_batches, "eta": args.eta,
              "threads": args.threads}
    started = time.perf_counter()
    results = {
        "command": "python benchmarks/nvit_fmnist.py " + " ".join(argv),
        "model": REFERENCE_MODEL, "test_images": len(test_set), "environment": environment(threads=args.threads),
        "baseline": {"top1": evaluate(model, test_set), "macs": total_macs(model.spec), "params": param_count(model),
                     "dims": dims_summary(model.spec)},
        "criteria": [accuracy_vs_flops(model, NViTConfig(target_flops=levels[-1], criterion=c, **common), levels,
                                       train_set, test_set, args.final_steps) for c in CRITERIA],
    }
    results["sparse_24"] = [
        sparse_on_top(model, f"nvit-{args.sparse_level}-round16",
                      NViTConfig(target_flops=args.sparse_level, round_to=16, **common), train_set, test_set,
                      args.final_steps),
        sparse_on_top(model, "unpruned", NViTConfig(round_to=16, threads=args.threads), train_set, test_set,
                      args.final_steps, prune=False),
    ]
    results["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / f"{args.name}.json", results)
    write_bytes_atomic(RESULTS / f"{args.name}.md", markdown(results).encode())
    plot(results, RESULTS / f"{args.name}.png")
    print(markdown(results))


if __name__ == "__main__":
    main(sys.argv[1:])

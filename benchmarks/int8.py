"""INT8 post-training quantization on ONNX Runtime CPU: accuracy on Fashion-MNIST and speed on fmnist_vit
and DeiT-S, each INT8 graph timed interleaved with its float export (1 thread).

    .venv/bin/python benchmarks/int8.py [--quick]

fmnist: the shipped model, an NViT model at 0.5× FLOPs (pruned and fine-tuned here) and a STAR plan at
0.6× FLOPs, each quantized with `vitdeploy quantize` (defaults: linear layers, min-max calibration on 512
training images) and evaluated on all 10,000 test images; speed at batch 8 and 64.
DeiT-S (seeded random weights: speed only, calibrated on random-normal images) at batch 1, 8 and 64:
vitdeploy's placement for each target, with and without the attention MatMuls, next to ONNX Runtime's
dynamic quantization of the same MatMuls (no calibration; weights only, activations per batch).
Writes benchmarks/results/int8-<cpu>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.run import bench_sources
from vitdeploy.export.onnx import export_onnx
from vitdeploy.hardware import cpu_name, device_slug, environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.zoo import load_model
from vitdeploy.quantize.config import QuantizeConfig
from vitdeploy.quantize.parts import nodes_by_part
from vitdeploy.quantize.ptq import quantize_onnx
from vitdeploy.tables import format_table

RESULTS = Path(__file__).parent / "results"
VITDEPLOY = [sys.executable, "-m", "vitdeploy.cli"]
FMNIST_MODELS = {
    "unpruned": None,
    "nvit-0.5": ["prune", "nvit", "fmnist_vit", "--target-flops", "0.5", "--calib", "fashion-mnist",
                 "--finetune-steps", "20", "--final-finetune-steps", "300", "--calib-batches", "4"],
    "star-0.6": ["prune", "star", "fmnist_vit", "--target-flops", "0.6", "--calib", "fashion-mnist"],
}


def vitdeploy(*args: str) -> dict:
    done = subprocess.run([*VITDEPLOY, *args, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"vitdeploy {' '.join(args)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def fmnist(work: Path, eval_limit: int, plan: TimingPlan) -> dict:
    rows, sources = [], {}
    for name, prune in FMNIST_MODELS.items():
        model = "fmnist_vit"
        if prune:
            model = str(work / name)
            vitdeploy(*prune, "--out", model, "--quiet")
        vitdeploy("export", model, "--out", str(work / f"{name}.onnx"))
        report = vitdeploy("quantize", model, "--calib", "fashion-mnist", "--eval-limit", str(eval_limit),
                           "--max-drop", "100", "--out", str(work / f"{name}.int8.onnx"))
        rows.append({"model": name, **report["accuracy"], "quantized": report["quantized"]})
        sources[f"{name} fp32"] = ModelSource(str(work / f"{name}.onnx"), work)
        sources[f"{name} int8"] = ModelSource(str(work / f"{name}.int8.onnx"), work)
    speed = bench_sources(sources, "onnxruntime", BuildConfig(batch_sizes=(8, 64), threads=1), plan, progress=True)
    return {"accuracy": rows, "speed": speed.rows}


def deit_small(work: Path, batches: tuple[int, ...], plan: TimingPlan) -> dict:
    model = load_model("deit_small_patch16_224")
    float_path = work / "deit-s.onnx"
    export_onnx(model, float_path)
    calibration = [np.random.default_rng(seed).standard_normal((8, 3, 224, 224)).astype(np.float32)
                   for seed in range(4)]
    variants = {
        "int8 onnxruntime placement": QuantizeConfig(target="onnxruntime"),
        "int8 tensorrt placement": QuantizeConfig(target="tensorrt"),
        "int8 onnxruntime placement + attention": QuantizeConfig(target="onnxruntime", parts=("linear", "attention")),
        "int8 tensorrt placement + attention": QuantizeConfig(target="tensorrt", parts=("linear", "attention")),
    }
    sources = {"fp32": ModelSource(str(float_path), work)}
    for index, (name, config) in enumerate(variants.items()):
        path = work / f"deit-s-{index}.onnx"
        quantize_onnx(float_path, path, calibration, config)
        sources[name] = ModelSource(str(path), work)
    sources["int8 dynamic (ONNX Runtime's quantize_dynamic)"] = ModelSource(str(dynamic(float_path, work)), work)
    speed = bench_sources(sources, "onnxruntime", BuildConfig(batch_sizes=batches, threads=1), plan, progress=True)
    return {"speed": speed.rows}


def dynamic(float_path: Path, work: Path) -> Path:
    """ONNX Runtime's dynamic quantization of the same linear MatMuls, for comparison."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / f"{float_path.stem}-dynamic.onnx"
    linear = nodes_by_part(onnx.load(str(float_path)), ("linear",))["linear"]
    quantize_dynamic(str(float_path), str(out), op_types_to_quantize=["MatMul"], nodes_to_quantize=linear,
                     per_channel=True, weight_type=QuantType.QInt8)
    return out


def speed_table(rows: list[dict], baseline: Callable[[str], str] | None = None) -> str:
    """Each row's speedup over its own float graph: ``baseline(model)`` names it (by default "X int8"
    over "X fp32", and DeiT-S variants over "fp32")."""
    baseline = baseline or _own_float_graph
    median = {(r["model"], r["batch"]): r["median_ms"] for r in rows}
    return format_table(["model", "batch", "median ms", "speedup over its fp32"],
                        [[r["model"], r["batch"], f"{r['median_ms']:.2f}",
                          f"{median[baseline(r['model']), r['batch']] / r['median_ms']:.2f}×"] for r in rows])


def _own_float_graph(model: str) -> str:
    return model.rsplit(" ", 1)[0] + " fp32" if model.endswith((" fp32", " int8")) else "fp32"


def accuracy_table(rows: list[dict]) -> str:
    return format_table(["model", "images", "fp32 top-1", "int8 top-1", "drop (points)", "agreement"],
                        [[r["model"], r["images"], f"{100 * r['float_top1']:.2f} %", f"{100 * r['int8_top1']:.2f} %",
                          f"{r['drop_points']:.2f}", f"{100 * r['agreement']:.2f} %"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and runs (a smoke test, not for the docs)")
    args = parser.parse_args()
    quick = args.quick
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {
            "command": "python benchmarks/int8.py" + (" --quick" if quick else ""),
            "environment": environment(), "threads": 1,
            "fmnist": fmnist(work, 500 if quick else 10_000, TimingPlan(warmup=2 if quick else 10,
                                                                       iters=4 if quick else 60,
                                                                       rounds=2 if quick else 10)),
            "deit_small": deit_small(work, (1, 8) if quick else (1, 8, 64),
                                     TimingPlan(warmup=1, iters=2 if quick else 6, rounds=2 if quick else 6)),
        }
    text = "\n\n".join([accuracy_table(result["fmnist"]["accuracy"]), speed_table(result["fmnist"]["speed"]),
                        speed_table(result["deit_small"]["speed"])])
    stem = RESULTS / f"int8-{device_slug(cpu_name())}{'-quick' if quick else ''}"
    write_json_atomic(stem.with_suffix(".json"), result)
    write_bytes_atomic(stem.with_suffix(".md"), (text + "\n").encode())
    print(text)


if __name__ == "__main__":
    main()

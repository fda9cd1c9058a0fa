"""QDQ or QOperator: which INT8 graph ONNX Runtime's CPU kernels run fastest for a ViT.

    .venv/bin/python benchmarks/int8_formats.py [--quick]

The same linear layers of fmnist_vit (batch 8 and 64) and DeiT-S (seeded random weights, batch 8), quantized
three ways and timed interleaved with their float export, 1 thread:
- QDQ, as `vitdeploy quantize --target onnxruntime` writes it: ONNX Runtime fuses each DequantizeLinear →
  MatMul → bias Add into one integer kernel whose output is float;
- QOperator, from ONNX Runtime's quantize_static on the same nodes with the same calibration: QLinearMatMul,
  whose output is quantized again and dequantized for the float ops after it;
- dynamic, from ONNX Runtime's quantize_dynamic: MatMulInteger, the activations' ranges found per batch.
fmnist_vit is calibrated on 512 training images (as `vitdeploy quantize` is by default) and every INT8 graph's
top-1 is measured on the 10,000 test images; DeiT-S is calibrated on random-normal images (speed only).
Writes benchmarks/results/int8-formats-<cpu>.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from int8 import accuracy_table, dynamic, speed_table
from vitdeploy.data.datasets import dataset_for
from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.run import bench_sources
from vitdeploy.export.check import op_counts
from vitdeploy.export.onnx import export_onnx
from vitdeploy.hardware import cpu_name, device_slug, environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.zoo import load_model
from vitdeploy.quantize.config import QuantizeConfig
from vitdeploy.quantize.parts import nodes_by_part
from vitdeploy.quantize.ptq import CalibrationImages, calibration_batches, compare_accuracy, quantize_onnx

RESULTS = Path(__file__).parent / "results"
MODELS = {"fmnist_vit": (8, 64), "deit_small_patch16_224": (8,)}


def qoperator(float_path: Path, out: Path, calibration: list[np.ndarray]) -> Path:
    """ONNX Runtime's QOperator graph of the same linear MatMuls, calibrated on the same images."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(float_path))
    images = CalibrationImages(calibration, graph.graph.input[0].name)
    quantize_static(str(float_path), str(out), images, quant_format=QuantFormat.QOperator,
                    nodes_to_quantize=nodes_by_part(graph, ("linear",))["linear"], op_types_to_quantize=["MatMul"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def quantization_ops(path: Path) -> dict[str, int]:
    counts = op_counts(onnx.load(str(path)).graph.node)
    return {op: n for op, n in sorted(counts.items()) if "uantize" in op or "Integer" in op or op.startswith("QLinear")}


def formats(name: str, batches: tuple[int, ...], work: Path, plan: TimingPlan, eval_limit: int | None) -> dict:
    model = load_model(name)
    float_path = work / f"{name}.onnx"
    export_onnx(model, float_path)
    calibration = calibration_images(model, name)
    paths = {"fp32": float_path}
    paths["int8 QDQ"] = work / f"{name}.qdq.onnx"
    quantize_onnx(float_path, paths["int8 QDQ"], calibration, QuantizeConfig(target="onnxruntime"))
    paths["int8 QOperator"] = qoperator(float_path, work / f"{name}.qop.onnx", calibration)
    paths["int8 dynamic"] = dynamic(float_path, work)
    int8 = {variant: path for variant, path in paths.items() if variant != "fp32"}
    result = {"ops": {variant: quantization_ops(path) for variant, path in int8.items()}}
    if name == "fmnist_vit":
        test = dataset_for(model, "fashion-mnist", "test", eval_limit)
        result["accuracy"] = [{"model": f"{name} {variant}", **compare_accuracy(float_path, path, test).to_dict()}
                              for variant, path in int8.items()]
    sources = {f"{name} {variant}": ModelSource(str(path), work) for variant, path in paths.items()}
    speed = bench_sources(sources, "onnxruntime", BuildConfig(batch_sizes=batches, threads=1), plan, progress=True)
    return {**result, "speed": speed.rows}


def calibration_images(model, name: str) -> list[np.ndarray]:
    """fmnist_vit: the training images `vitdeploy quantize` calibrates on by default; DeiT-S: random-normal."""
    if name == "fmnist_vit":
        settings = QuantizeConfig()
        return calibration_batches(dataset_for(model, "fashion-mnist", "train", settings.calib_images), settings)
    shape = (8, model.spec.in_chans, model.spec.img_size, model.spec.img_size)
    return [np.random.default_rng(seed).standard_normal(shape).astype(np.float32) for seed in range(4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test, not for the docs)")
    args = parser.parse_args()
    plans = {"fmnist_vit": TimingPlan(warmup=2, iters=4, rounds=2) if args.quick else TimingPlan(warmup=10, iters=60, rounds=10),
             "deit_small_patch16_224": TimingPlan(warmup=1, iters=2, rounds=2) if args.quick
                                       else TimingPlan(warmup=1, iters=6, rounds=6)}
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: formats(name, batches, Path(tmp), plans[name], 500 if args.quick else None)
                  for name, batches in MODELS.items()}
    result = {"command": "python benchmarks/int8_formats.py" + (" --quick" if args.quick else ""),
              "environment": environment(), "threads": 1, "models": models}
    text = "\n\n".join([accuracy_table(models["fmnist_vit"]["accuracy"]),
                        *(speed_table(m["speed"], baseline=lambda model: model.split(" ", 1)[0] + " fp32")
                          for m in models.values())])
    stem = RESULTS / f"int8-formats-{device_slug(cpu_name())}{'-quick' if args.quick else ''}"
    write_json_atomic(stem.with_suffix(".json"), result)
    write_bytes_atomic(stem.with_suffix(".md"), (text + "\n").encode())
    print(text)


if __name__ == "__main__":
    main()

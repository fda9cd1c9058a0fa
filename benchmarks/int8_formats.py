"""QDQ or QOperator: which INT8 graph ONNX Runtime's CPU kernels run fastest for a ViT.

    .venv/bin/python benchmarks/int8_formats.py [--quick]

The same linear layers of fmnist_vit (batch 8 and 64) and DeiT-S (seeded random weights, batch 8), quantized
three ways and timed interleaved with their float export, 1 thread:
- QDQ, as `vitdeploy quantize --target onnxruntime` writes it: ONNX Runtime fuses each DequantizeLinear →
  MatMul → bias Add into one integer kernel whose output is float;
- QOperator, from ONNX Runtime's quantize_static on the same nodes with the same calibration: QLinearMatMul,
  whose output is quantized again and dequantized for the float ops after it;
- dynamic, from ONNX Runtime's quantize_dynamic: MatMulInteger, the activations' ranges found per batch.
Calibration uses random-normal images: latency does not depend on the values.
Writes benchmarks/results/int8-formats-<cpu>.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from int8 import dynamic, speed_table
from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.run import bench_sources
from vitdeploy.export.onnx import export_onnx
from vitdeploy.hardware import cpu_name, device_slug, environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.zoo import load_model
from vitdeploy.quantize.config import QuantizeConfig
from vitdeploy.quantize.ptq import nodes_by_part, quantize_onnx

RESULTS = Path(__file__).parent / "results"
MODELS = {"fmnist_vit": (8, 64), "deit_small_patch16_224": (8,)}


def qoperator(float_path: Path, out: Path, calibration: list[np.ndarray]) -> Path:
    """ONNX Runtime's QOperator graph of the same linear MatMuls, calibrated on the same images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(float_path))

    class Images(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {graph.graph.input[0].name: batch}

    quantize_static(str(float_path), str(out), Images(), quant_format=QuantFormat.QOperator,
                    nodes_to_quantize=nodes_by_part(graph, ("linear",))["linear"], op_types_to_quantize=["MatMul"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {op: n for op, n in sorted(counts.items()) if "Quant" in op or "Integer" in op or op.startswith("QLinear")}


def formats(name: str, batches: tuple[int, ...], work: Path, plan: TimingPlan) -> dict:
    model = load_model(name)
    float_path = work / f"{name}.onnx"
    export_onnx(model, float_path)
    shape = (8, model.spec.in_chans, model.spec.img_size, model.spec.img_size)
    calibration = [np.random.default_rng(seed).standard_normal(shape).astype(np.float32) for seed in range(4)]
    paths = {"fp32": float_path}
    paths["int8 QDQ"] = work / f"{name}.qdq.onnx"
    quantize_onnx(float_path, paths["int8 QDQ"], calibration, QuantizeConfig(target="onnxruntime"))
    paths["int8 QOperator"] = qoperator(float_path, work / f"{name}.qop.onnx", calibration)
    paths["int8 dynamic"] = dynamic(float_path, work)
    sources = {f"{name} {variant}": ModelSource(str(path), work) for variant, path in paths.items()}
    speed = bench_sources(sources, "onnxruntime", BuildConfig(batch_sizes=batches, threads=1), plan, progress=True)
    return {"speed": speed.rows, "ops": {variant: op_counts(path) for variant, path in paths.items() if variant != "fp32"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test, not for the docs)")
    args = parser.parse_args()
    plans = {"fmnist_vit": TimingPlan(warmup=2, iters=4, rounds=2) if args.quick else TimingPlan(warmup=10, iters=60, rounds=10),
             "deit_small_patch16_224": TimingPlan(warmup=1, iters=2, rounds=2) if args.quick
                                       else TimingPlan(warmup=1, iters=6, rounds=6)}
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: formats(name, batches, Path(tmp), plans[name]) for name, batches in MODELS.items()}
    result = {"command": "python benchmarks/int8_formats.py" + (" --quick" if args.quick else ""),
              "environment": environment(), "threads": 1, "models": models}
    text = "\n\n".join(speed_table(m["speed"], baseline=lambda model: model.split(" ", 1)[0] + " fp32")
                       for m in models.values())
    stem = RESULTS / f"int8-formats-{device_slug(cpu_name())}{'-quick' if args.quick else ''}"
    write_json_atomic(stem.with_suffix(".json"), result)
    write_bytes_atomic(stem.with_suffix(".md"), (text + "\n").encode())
    print(text)


if __name__ == "__main__":
    main()

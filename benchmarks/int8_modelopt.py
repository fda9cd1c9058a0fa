"""vitdeploy's INT8 quantizer next to NVIDIA ModelOpt's ONNX post-training quantization, as peers:
the same float graph of the shipped fmnist_vit, the same 512 calibration images, top-1 on all
10,000 test images and speed on ONNX Runtime CPU (1 thread, batch 8 and 64, interleaved).

ModelOpt's ONNX extra needs onnxruntime-gpu and cupy, which conflict with this project's CPU
ONNX Runtime, so it runs in an environment of its own, made once (about 6 GB: it brings a CUDA
build of torch):

    python -m venv .modelopt-venv && .modelopt-venv/bin/pip install 'nvidia-modelopt[onnx]==0.47.0' 'numpy<2'
    .venv/bin/python benchmarks/int8_modelopt.py [--modelopt-python .modelopt-venv/bin/python]

ModelOpt runs twice: with its defaults (it chooses which ops to quantize, and its own calibration)
and restricted to the nodes vitdeploy quantizes with max calibration, which is min-max for
symmetric INT8. Every graph is evaluated and timed here, with this project's ONNX Runtime.
Writes benchmarks/results/int8-modelopt-fmnist.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from int8 import accuracy_table, vitdeploy

from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.run import bench_sources
from vitdeploy.data.datasets import dataset_for
from vitdeploy.hardware import environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.zoo import load_model
from vitdeploy.quantize.config import QuantizeConfig
from vitdeploy.quantize.parts import nodes_by_part
from vitdeploy.quantize.ptq import calibration_batches, compare_accuracy
from vitdeploy.tables import format_table

RESULTS = Path(__file__).parent / "results"
MODELOPT_RUN = """
import json, sys
import numpy as np
import modelopt
from modelopt.onnx.quantization import quantize
float_path, calibration, out, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
quantize(float_path, quantize_mode="int8", calibration_data=np.load(calibration), calibration_eps=["cpu"],
         high_precision_dtype="fp32", output_path=out, **options)
print(modelopt.__version__)
"""


def modelopt_int8(python: str, float_path: Path, calibration: Path, out: Path, **options) -> str:
    """Quantize with ModelOpt in its own environment; returns its version."""
    done = subprocess.run([python, "-c", MODELOPT_RUN, str(float_path), str(calibration), str(out),
                           json.dumps(options)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"ModelOpt failed ({python}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def quantized_ops(path: Path) -> int:
    return sum(node.op_type == "QuantizeLinear" for node in onnx.load(path).graph.node)


def run(work: Path, python: str, plan: TimingPlan) -> dict:
    model = load_model("fmnist_vit")
    float_path, ours = work / "fp32.onnx", work / "vitdeploy.int8.onnx"
    vitdeploy("export", "fmnist_vit", "--out", str(float_path))
    report = vitdeploy("quantize", "fmnist_vit", "--calib", "fashion-mnist", "--eval-limit", "10",
                       "--max-drop", "100", "--out", str(ours))
    calibration, settings = work / "calibration.npy", QuantizeConfig()
    train = dataset_for(model, "fashion-mnist", "train", settings.calib_images)
    np.save(calibration, np.concatenate(calibration_batches(train, settings)))
    linear = [name for names in nodes_by_part(onnx.load(float_path), ("linear",)).values() for name in names]
    graphs = {"vitdeploy quantize (defaults)": ours,
              "ModelOpt (defaults)": work / "modelopt-defaults.int8.onnx",
              "ModelOpt (vitdeploy's nodes, max calibration)": work / "modelopt-linear.int8.onnx"}
    version = modelopt_int8(python, float_path, calibration, graphs["ModelOpt (defaults)"])
    modelopt_int8(python, float_path, calibration, graphs["ModelOpt (vitdeploy's nodes, max calibration)"],
                  nodes_to_quantize=linear, calibration_method="max")
    test = dataset_for(model, "fashion-mnist", "test")
    accuracy = [{"model": name, "quantized_ops": quantized_ops(path),
                 **compare_accuracy(float_path, path, test).to_dict()} for name, path in graphs.items()]
    sources = {"fp32": ModelSource(str(float_path), work),
               **{name: ModelSource(str(path), work) for name, path in graphs.items()}}
    speed = bench_sources(sources, "onnxruntime", BuildConfig(batch_sizes=(8, 64), threads=1), plan, progress=True)
    return {"modelopt": version, "vitdeploy_quantized": report["quantized"], "accuracy": accuracy,
            "speed": speed.rows}


def markdown(result: dict) -> str:
    median = {(r["model"], r["batch"]): r["median_ms"] for r in result["speed"]}
    speed = [[r["model"], r["batch"], f"{r['median_ms']:.2f}", f"{median['fp32', r['batch']] / r['median_ms']:.2f}×"]
             for r in result["speed"]]
    quantized = [[r["model"], r["quantized_ops"]] for r in result["accuracy"]]
    return "\n".join([
        f"# INT8 on fmnist_vit: vitdeploy quantize and ModelOpt {result['modelopt']} ONNX PTQ", "",
        "Same float graph, same 512 calibration images; ONNX Runtime CPU, 1 thread, timed interleaved.", "",
        format_table(["graph", "QuantizeLinear nodes"], quantized), "",
        accuracy_table(result["accuracy"]), "",
        format_table(["graph", "batch", "median ms", "speedup over fp32"], speed), "",
        f"Command: `{result['command']}`", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modelopt-python", default=".modelopt-venv/bin/python",
                        help="the Python of an environment with nvidia-modelopt[onnx] (see above)")
    parser.add_argument("--iters", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="int8-modelopt-") as work:
        result = run(Path(work), args.modelopt_python, TimingPlan(warmup=5, iters=args.iters, rounds=6))
    result.update(command=" ".join(["python benchmarks/int8_modelopt.py", *sys.argv[1:]]), environment=environment(1))
    stem = RESULTS / "int8-modelopt-fmnist"
    write_json_atomic(stem.with_suffix(".json"), result)
    write_bytes_atomic(stem.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))


if __name__ == "__main__":
    main()

"""Foundation figures quoted in the README, each written as JSON under benchmarks/results/.

    .venv/bin/python benchmarks/foundation.py

1. The shipped Fashion-MNIST reference model: top-1 on the 10k test set in PyTorch and through
   its ONNX export on ONNX Runtime, and how often the two agree.
2. DeiT-S (seeded random init) exported with tokens dropped after blocks 4, 7 and 10, under both
   selections: wall time of the export and its checks, the audit and the parity.
3. The default recipe (`make demo`): every variant's MACs and accuracy in both runtimes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from vitdeploy.hardware import environment
from vitdeploy.evaluate import EvalOptions, evaluate_model
from vitdeploy.export.onnx import ExportConfig, export_onnx
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.architectures import REFERENCE_MODEL
from vitdeploy.models.zoo import create_model
from vitdeploy.pipeline import load_recipe, run_recipe, summary_table
from vitdeploy.tables import format_table
from vitdeploy.models.token_plan import apply_keep_plan

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
DEIT_PLAN = "4:0.7,7:0.7,10:0.7"


def reference_accuracy() -> dict:
    return evaluate_model(create_model(REFERENCE_MODEL), EvalOptions())


def deit_small_exports() -> list[dict]:
    model = apply_keep_plan(create_model("deit_small_patch16_224"), DEIT_PLAN)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for selection in ("topk", "rank"):
            started = time.perf_counter()
            report = export_onnx(model, Path(tmp) / f"deit_s_{selection}.onnx", ExportConfig(selection=selection))
            rows.append({"selection": selection, "keep": DEIT_PLAN, "seconds": time.perf_counter() - started,
                         **{k: v for k, v in report.to_dict().items() if k in ("macs", "audit", "parity")}})
    return rows


def markdown(accuracy: dict, exports: list[dict], recipe: dict) -> str:
    acc = format_table(["model", "test images", "PyTorch top-1", "ONNX Runtime top-1", "ORT = PyTorch"],
                       [[REFERENCE_MODEL, accuracy["images"], accuracy["torch_top1"], accuracy["onnx_top1"],
                         accuracy["onnx_torch_agreement"]]])
    exp = format_table(
        ["DeiT-S export", "keep", "export + checks (s)", "TopK (k/axis)", "audit", "max abs diff ORT vs torch"],
        [[e["selection"], e["keep"], f"{e['seconds']:.1f}",
          ", ".join(f"{t['k']}/{t['axis_length']}" for t in e["audit"]["topk"]) or "none",
          "pass" if e["audit"]["passed"] else "FAIL", f"{e['parity']['max_abs_diff']:.1e}"] for e in exports])
    return "\n\n".join([acc, exp, summary_table(recipe)]) + "\n"


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    accuracy = reference_accuracy()
    exports = deit_small_exports()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = run_recipe(load_recipe(ROOT / "export" / "default.json"), Path(tmp))
    for variant in recipe["variants"]:
        variant.pop("onnx")
    result = {"environment": environment(threads=2), "reference_accuracy": accuracy, "deit_small_export": exports,
              "default_recipe": recipe, "command": "python benchmarks/foundation.py"}
    write_json_atomic(RESULTS / "foundation-cpu.json", result)
    table = markdown(accuracy, exports, recipe)
    write_bytes_atomic(RESULTS / "foundation-cpu.md", table.encode())
    sys.stdout.write(table)


if __name__ == "__main__":
    main()

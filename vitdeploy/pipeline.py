"""Declarative pipelines: a recipe (JSON) names a model, token plans, export and eval settings.

For each variant (the unpruned baseline plus every token plan) the pipeline saves the model,
exports it through the checked ONNX exporter, and measures top-1 in PyTorch and ONNX Runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import onnx_predictions
from vitdeploy.export.onnx import ExportConfig, export_onnx
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.models.flops import total_macs
from vitdeploy.models.zoo import load_model
from vitdeploy.report import format_table
from vitdeploy.tokens.plan import apply_keep_plan
from vitdeploy.train.loop import dataset_for, predict

DEFAULT_RECIPE = Path("export/default.json")


@dataclass
class Variant:
    name: str
    keep: str | None = None
    package: bool = False


@dataclass
class Recipe:
    name: str
    model: str
    variants: list[Variant]
    export: ExportConfig = field(default_factory=ExportConfig)
    data: str = "fashion-mnist"
    split: str = "test"
    description: str = ""


def load_recipe(path: str | Path | None) -> Recipe:
    path = Path(path) if path else DEFAULT_RECIPE
    if not path.is_file():
        raise VitDeployError(f"recipe {path} not found (run from the repository root, or pass a recipe path)")
    try:
        raw = json.loads(path.read_text())
        return Recipe(
            name=raw["name"], model=raw["model"], description=raw.get("description", ""),
            variants=[Variant(name="baseline")] + [Variant(**v) for v in raw.get("token_plans", [])],
            export=ExportConfig(**raw.get("export", {})).validate(),
            data=raw.get("data", "fashion-mnist"), split=raw.get("split", "test"),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise VitDeployError(f"recipe {path} is invalid: {type(exc).__name__}: {exc}") from None


def run_recipe(recipe: Recipe, out: Path, limit: int | None = None, progress: bool = False) -> dict:
    base = load_model(recipe.model)
    base_macs = total_macs(base.spec)
    rows = []
    for variant in recipe.variants:
        model = apply_keep_plan(base, variant.keep, variant.package) if variant.keep else base
        rows.append(_run_variant(recipe, variant, model, out / variant.name, base_macs, limit, progress))
    summary = {"recipe": recipe.name, "model": recipe.model, "data": recipe.data, "split": recipe.split,
               "variants": rows}
    write_json_atomic(out / "summary.json", summary)
    write_bytes_atomic(out / "summary.md", (summary_table(summary) + "\n").encode())
    return summary


def _run_variant(recipe, variant, model, out: Path, base_macs: int, limit, progress) -> dict:
    save_artifact(model, out / "model")
    export = export_onnx(model, out / "model.onnx", recipe.export).to_dict()
    dataset = dataset_for(model, recipe.data, recipe.split, limit)
    torch_pred, labels = predict(model, dataset, progress=progress)
    onnx_pred = onnx_predictions(out / "model.onnx", dataset, progress)
    torch_pred, labels = torch_pred.numpy(), labels.numpy()
    return {
        "variant": variant.name, "keep": variant.keep, "package": variant.package,
        "tokens_per_block": model.spec.tokens_entering(),
        "macs": export["macs"], "macs_ratio": export["macs"] / base_macs,
        "torch_top1": float((torch_pred == labels).mean()), "onnx_top1": float((onnx_pred == labels).mean()),
        "agreement": float((onnx_pred == torch_pred).mean()), "images": int(len(labels)),
        "audit_passed": export["audit"]["passed"], "parity_max_abs_diff": export["parity"]["max_abs_diff"],
        "onnx": str(out / "model.onnx"),
    }


def summary_table(summary: dict) -> str:
    rows = [
        [v["variant"], v["keep"] or "-", f"{v['macs'] / 1e6:.2f}M", f"{v['macs_ratio']:.2f}", v["torch_top1"],
         v["onnx_top1"], v["agreement"], "pass" if v["audit_passed"] else "FAIL", f"{v['parity_max_abs_diff']:.1e}"]
        for v in summary["variants"]
    ]
    title = (f"recipe {summary['recipe']}: {summary['model']} on {summary['data']}/{summary['split']} "
             f"({summary['variants'][0]['images']} images)")
    headers = ["variant", "keep", "MACs", "× base", "torch top-1", "ORT top-1", "ORT=torch", "audit", "parity"]
    return title + "\n\n" + format_table(headers, rows)

"""Declarative pipelines: a recipe (JSON) names a model, token plans, export and eval settings.

For each variant (the unpruned baseline plus every token plan) the pipeline saves the model,
exports it through the checked ONNX exporter, and measures top-1 in PyTorch and ONNX Runtime.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import EvalOptions, evaluate_model
from vitdeploy.export.onnx import ExportConfig, export_onnx
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.models.flops import total_macs
from vitdeploy.models.zoo import load_model
from vitdeploy.report import format_table
from vitdeploy.tokens.plan import apply_keep_plan, parse_keep

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


RECIPE_KEYS = {"name", "description", "model", "token_plans", "export", "data", "split"}
PLAN_KEYS = {"name", "keep", "package"}


def load_recipe(path: str | Path | None) -> Recipe:
    """Read and fully validate a recipe, so that a mistake fails before any work starts."""
    path = Path(path) if path else DEFAULT_RECIPE
    if not path.is_file():
        raise VitDeployError(f"recipe {path} not found (run from the repository root, or pass a recipe path)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VitDeployError(f"recipe {path} is not valid JSON: {exc}") from None
    _require_keys(raw, RECIPE_KEYS, {"name", "model"}, f"recipe {path}")
    variants = [Variant(name="baseline")] + [_variant(plan, path) for plan in raw.get("token_plans", [])]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise VitDeployError(f"recipe {path}: token plan names must be unique and not 'baseline'")
    try:
        export = ExportConfig(**raw.get("export", {})).validate()
    except TypeError as exc:
        raise VitDeployError(f"recipe {path}: bad export settings: {exc}") from None
    return Recipe(name=raw["name"], model=raw["model"], description=raw.get("description", ""),
                  variants=variants, export=export, data=raw.get("data", "fashion-mnist"),
                  split=raw.get("split", "test"))


def _variant(plan: dict, path: Path) -> Variant:
    _require_keys(plan, PLAN_KEYS, {"name", "keep"}, f"recipe {path}: token plan")
    name, keep = plan["name"], plan["keep"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise VitDeployError(f"recipe {path}: token plan name {name!r} must be letters, digits, '_', '.', '-'")
    if not isinstance(keep, str):
        raise VitDeployError(f"recipe {path}: token plan {name}: keep must be a string like \"2:0.7,4:0.7\"")
    parse_keep(keep)
    return Variant(name=name, keep=keep, package=bool(plan.get("package", False)))


def _require_keys(raw: object, allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(raw, dict):
        raise VitDeployError(f"{where} must be a JSON object")
    unknown, missing = sorted(set(raw) - allowed), sorted(required - set(raw))
    if unknown or missing:
        raise VitDeployError(f"{where}: " + "; ".join(
            f"{what}: {', '.join(keys)}" for what, keys in (("unknown keys", unknown), ("missing keys", missing)) if keys))


def run_recipe(recipe: Recipe, out: Path, limit: int | None = None, progress: bool = False) -> dict:
    base = load_model(recipe.model)
    # Building every variant first checks that each plan fits the model before any work starts.
    models = [apply_keep_plan(base, v.keep, v.package) if v.keep else base for v in recipe.variants]
    base_macs = total_macs(base.spec)
    rows = [_run_variant(recipe, variant, model, out / variant.name, base_macs, limit, progress)
            for variant, model in zip(recipe.variants, models)]
    summary = {"recipe": recipe.name, "model": recipe.model, "data": recipe.data, "split": recipe.split,
               "variants": rows}
    write_json_atomic(out / "summary.json", summary)
    write_bytes_atomic(out / "summary.md", (summary_table(summary) + "\n").encode())
    return summary


def _run_variant(recipe, variant, model, out: Path, base_macs: int, limit, progress) -> dict:
    save_artifact(model, out / "model")
    export = export_onnx(model, out / "model.onnx", recipe.export).to_dict()
    accuracy = evaluate_model(model, EvalOptions(recipe.data, recipe.split, limit, onnx_path=export["onnx"]),
                              progress)
    return {
        "variant": variant.name, "keep": variant.keep, "package": variant.package,
        "tokens_per_block": model.spec.tokens_entering(),
        "macs": export["macs"], "macs_ratio": export["macs"] / base_macs,
        "torch_top1": accuracy["torch_top1"], "onnx_top1": accuracy["onnx_top1"],
        "agreement": accuracy["onnx_torch_agreement"], "images": accuracy["images"],
        "audit_passed": export["audit"]["passed"], "parity_max_abs_diff": export["parity"]["max_abs_diff"],
        "onnx": export["onnx"],
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

"""Recipes: one JSON file that runs the whole chain for a model and its variants.

A recipe names a model and its variants. Each variant is made by a sequence of prune stages
(any registered method with its settings, e.g. NViT then STAR) and/or a static keep plan; the
unpruned baseline always comes first. Every variant is then saved, exported through the checked
exporter, and (with ``eval``) measured for top-1 in PyTorch and ONNX Runtime. With ``bench``,
all variants are built on one backend and timed interleaved, and the results are named after
the device the engines ran on. The whole recipe is validated before any work starts, and the
output directory is replaced only when every variant succeeded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import parse, schema
from vitdeploy.tables import format_table

DEFAULT_RECIPE = Path("export/default.json")
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@schema
@dataclass
class PruneStage:
    method: str
    """A registered pruning method (``vitdeploy prune --help`` lists them)."""
    data: str | None = None
    """The data the method reads (its --calib or --data): fashion-mnist or an ImageFolder directory."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The method's settings, as its ``vitdeploy prune METHOD`` options without the dashes."""


@schema
@dataclass
class Variant:
    name: str
    prune: list[PruneStage] = field(default_factory=list)
    keep: str | None = None
    """A static class-attention keep plan applied after the prune stages, as for ``export --keep``."""
    package: bool = False

    def made_by(self) -> str | None:
        """The prune methods and keep plan that make this variant, e.g. 'nvit + star + 2:0.7'."""
        return " + ".join([s.method for s in self.prune] + ([self.keep] if self.keep else [])) or None


@schema
@dataclass
class BenchStage:
    backend: str = "onnxruntime"
    precision: str = "fp32"
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (8,)
    threads: int = 2
    warmup: int = 10
    iters: int = 50
    rounds: int = 5
    sparsity: str = "auto"


@schema
@dataclass
class Recipe:
    name: str
    model: str
    description: str = ""
    variants: list[Variant] = field(default_factory=list)
    """The variants besides the unpruned baseline, which always runs first."""
    export: dict[str, Any] = field(default_factory=dict)
    """``ExportConfig`` settings shared by every variant's export."""
    data: str = "fashion-mnist"
    split: str = "test"
    eval: bool = True
    resize: bool = False
    bench: BenchStage | None = None

    def validate(self) -> "Recipe":
        names = [v.name for v in self.variants]
        bad = [n for n in names if not VARIANT_NAME.fullmatch(n) or n == "baseline"]
        if bad or len(set(names)) != len(names):
            raise VitDeployError(f"variant names must be unique, not 'baseline', and letters, digits, '_', '.', "
                                 f"'-' only: {', '.join(map(repr, bad or names))}")
        return self


@dataclass
class _Prepared:
    """A recipe with every setting parsed into the library's own config objects."""

    recipe: Recipe
    export: Any
    stages: dict[str, list[tuple[Any, Any, PruneStage]]]
    """variant → [(method, config, stage)], in order."""


def load_recipe(path: str | Path | None) -> Recipe:
    """Read and fully validate a recipe, so that a mistake fails before any work starts."""
    path = Path(path) if path else DEFAULT_RECIPE
    if not path.is_file():
        raise VitDeployError(f"recipe {path} not found (run from the repository root, or pass a recipe path)")
    recipe = parse(Recipe, path.read_bytes(), f"recipe {path}")
    _prepare(recipe, f"recipe {path}")
    return recipe


def _prepare(recipe: Recipe, where: str) -> _Prepared:
    from vitdeploy.export.config import ExportConfig
    from vitdeploy.prune.registry import METHODS
    from vitdeploy.models.token_plan import parse_keep

    export = parse(ExportConfig, recipe.export, f"{where}: export")
    stages = {}
    for variant in recipe.variants:
        if variant.keep is not None:
            parse_keep(variant.keep)
        stages[variant.name] = []
        for index, stage in enumerate(variant.prune, start=1):
            method = METHODS.get(stage.method)
            context = f"{where}: variant {variant.name}: prune stage {index} ({stage.method})"
            if set(stage.settings) - set(method.options):
                unknown = ", ".join(sorted(set(stage.settings) - set(method.options)))
                raise VitDeployError(f"{context}: unknown settings {unknown}; {stage.method} takes "
                                     f"{', '.join(method.options)}")
            config = parse(method.config, {**method.defaults, **stage.settings, **method.fixed}, context)
            if method.data is not None and method.data.required and not stage.data:
                raise VitDeployError(f"{context}: needs \"data\" ({method.data.help})")
            stages[variant.name].append((method, config, stage))
    if recipe.bench is not None:
        _bench_settings(recipe.bench)
    return _Prepared(recipe, export, stages)


def run_recipe(recipe: Recipe, out: Path, limit: int | None = None, progress: bool = False, pipeline=None,
               command: str | None = None) -> dict:
    """Run every stage of ``recipe`` into a fresh directory, then move it to ``out`` (replacing it).
    ``command`` (the command line that asked for it) is recorded in the summary."""
    from vitdeploy.io import atomic_dir

    prepared = _prepare(recipe, f"recipe {recipe.name}")
    with atomic_dir(out, _owned_names(recipe, out)) as work:
        summary = _run(prepared, work, limit, progress, pipeline, command)
    return summary


def _owned_names(recipe: Recipe, out: Path) -> set[str]:
    """What a recipe's output directory holds, so that re-running it may replace it."""
    bench_files = {p.name for p in out.glob("bench-*")} if out.is_dir() else set()
    return {"summary.json", "summary.md", "baseline", *(v.name for v in recipe.variants), *bench_files}


def _run(prepared: _Prepared, out: Path, limit: int | None, progress: bool, pipeline, command: str | None) -> dict:
    from vitdeploy import runtime
    from vitdeploy.hardware import environment
    from vitdeploy.io import write_bytes_atomic, write_json_atomic
    from vitdeploy.models.flops import total_macs
    from vitdeploy.models.zoo import load_model

    recipe = prepared.recipe
    base = load_model(recipe.model)
    variants = [Variant("baseline"), *recipe.variants]
    base_macs = total_macs(base.spec)
    _check_keep_plans(recipe, base)
    models, prune_reports = {"baseline": base}, {"baseline": []}
    for variant in tqdm(recipe.variants, desc="prune", disable=not progress or not recipe.variants):
        models[variant.name], prune_reports[variant.name] = _make_variant(
            base, variant, prepared.stages[variant.name], out / variant.name, recipe.resize, progress, pipeline)
    rows = [_export_and_eval(prepared, v, models[v.name], prune_reports[v.name], out / v.name, base_macs, limit,
                             progress)
            for v in tqdm(variants, desc="export", disable=not progress)]
    summary = {"recipe": recipe.name, "model": recipe.model, "data": recipe.data, "split": recipe.split,
               "command": command, "environment": environment(),
               "variants": rows}
    if recipe.bench is not None:  # timed by the main process alone in a torchrun job
        summary["bench"] = runtime.current().from_main(lambda: _bench(recipe.bench, models, rows, out, progress))
    write_json_atomic(out / "summary.json", summary)
    write_bytes_atomic(out / "summary.md", (summary_table(summary) + "\n").encode())
    return summary


def _check_keep_plans(recipe: Recipe, base) -> None:
    """Keep plans on the unpruned model fail before any work (a plan after prune stages can only be
    checked once the pruned model exists)."""
    from vitdeploy.models.token_plan import keep_plan_spec, parse_keep

    for variant in recipe.variants:
        if variant.keep and not variant.prune:
            keep_plan_spec(base.spec, parse_keep(variant.keep))


def _make_variant(base, variant: Variant, stages: list, out: Path, resize: bool,
                  progress: bool, pipeline) -> tuple[Any, list[dict]]:
    from vitdeploy.prune.registry import PruneContext
    from vitdeploy.models.token_plan import apply_keep_plan

    model, reports = base, []
    for method, config, stage in stages:
        context = PruneContext(data=stage.data, out=str(out / "model"), resize=resize, progress=progress,
                               pipeline=pipeline)
        model, report = method.prune(model, config, context)
        reports.append(report)
    if variant.keep:
        model = apply_keep_plan(model, variant.keep, package=variant.package)
    return model, reports


def _export_and_eval(prepared: _Prepared, variant: Variant, model, prune_reports: list[dict], out: Path, base_macs: int,
                     limit, progress) -> dict:
    from vitdeploy.evaluate import EvalOptions, evaluate_model
    from vitdeploy.export.onnx import export_onnx
    from vitdeploy.models.checkpoint import save_artifact

    recipe = prepared.recipe
    reports = {"prune.json": {"stages": prune_reports}} if prune_reports else {}
    save_artifact(model, out / "model", reports=reports)
    export = export_onnx(model, out / "model.onnx", prepared.export).to_dict()
    row = {"variant": variant.name, "keep": variant.made_by(), "tokens_per_block": model.spec.tokens_entering(),
           "macs": export["macs"], "macs_ratio": export["macs"] / base_macs,
           "audit_passed": export["audit"]["passed"], "parity_max_abs_diff": export["parity"]["max_abs_diff"],
           "onnx": export["onnx"]}
    if recipe.eval:
        options = EvalOptions(recipe.data, recipe.split, limit, resize=recipe.resize, onnx_path=export["onnx"])
        accuracy = evaluate_model(model, options, progress)
        row.update(torch_top1=accuracy["torch_top1"], onnx_top1=accuracy["onnx_top1"],
                   agreement=accuracy["onnx_torch_agreement"], images=accuracy["images"])
    return row


def _bench(stage: BenchStage, models: dict, rows: list[dict], out: Path, progress: bool) -> dict:
    from vitdeploy.backends import ModelSource
    from vitdeploy.hardware import device_name, device_slug
    from vitdeploy.bench.report import write_result
    from vitdeploy.bench.run import bench_sources

    config, plan = _bench_settings(stage)
    sources = {row["variant"]: ModelSource(row["onnx"], out, model=models[row["variant"]]) for row in rows}
    result = bench_sources(sources, stage.backend, config, plan, progress, stage.sparsity)
    stem = out / f"bench-{device_slug(device_name(stage.device))}-{stage.backend}-{stage.precision}"
    write_result(result, stem)
    return {"result": f"{stem.name}.json", "rows": result.rows}


def _bench_settings(stage: BenchStage):
    """The stage's (BuildConfig, TimingPlan), validated."""
    from vitdeploy.backends import BuildConfig, get_backend
    from vitdeploy.bench.harness import TimingPlan

    get_backend(stage.backend, require_available=False)
    config = BuildConfig(precision=stage.precision, device=stage.device, batch_sizes=stage.batch_sizes,
                         threads=stage.threads).validate()
    return config, TimingPlan(warmup=stage.warmup, iters=stage.iters, rounds=stage.rounds).validate()


def summary_table(summary: dict) -> str:
    rows = [
        [v["variant"], v["keep"] or "-", f"{v['macs'] / 1e6:.2f}M", f"{v['macs_ratio']:.2f}", v.get("torch_top1", "-"),
         v.get("onnx_top1", "-"), v.get("agreement", "-"), "pass" if v["audit_passed"] else "FAIL",
         f"{v['parity_max_abs_diff']:.1e}"]
        for v in summary["variants"]
    ]
    images = summary["variants"][0].get("images")
    title = (f"recipe {summary['recipe']}: {summary['model']} on {summary['data']}/{summary['split']}"
             + (f" ({images} images)" if images else ""))
    headers = ["variant", "made by", "MACs", "× base", "torch top-1", "ORT top-1", "ORT=torch", "audit", "parity"]
    text = title + "\n\n" + format_table(headers, rows)
    if "bench" in summary:
        text += "\n\n" + _bench_table(summary["bench"]["rows"])
    return text


def _bench_table(rows: list[dict]) -> str:
    return format_table(["variant", "batch", "median ms", "img/s", "× baseline"],
                        [[r["model"], r["batch"], f"{r['median_ms']:.2f}", f"{r['throughput']:.1f}",
                          f"{r['ratio_to_first']:.2f}"] for r in rows])

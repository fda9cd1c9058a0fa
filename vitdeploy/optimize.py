"""The most accurate version of a model that runs within a latency budget, measured.

``vitdeploy optimize`` joins structural and token pruning under one latency budget, with
latencies predicted by a table measured for the model at hand (``vitdeploy lut build --for``):

1. the table is checked (backend, batch, device, coverage of the model's shapes) and corrected
   for drift: the unpruned model is measured now and the table rescaled to predict it
   (``vitdeploy.lut.measure``);
2. candidates: one NViT run (latency term from the table) shrinks the model step by step, and a
   snapshot is kept at every ``width_step`` of the unpruned predicted latency, from 1.0 (the
   unpruned model) down to the budget (NViT alone). Each snapshot that is still over budget gets
   the token plan (``tokens``, e.g. STAR) whose knob is solved for the budget on that compacted
   model. Every candidate is predicted at or under the budget;
3. each candidate is scored cheaply: top-1 on a fixed sample of the training split, after the
   prune and before the final fine-tune (the proxy);
4. the best candidate gets a distilled fine-tune with its token plan active, is exported with
   every check, measured with the harness interleaved with the unpruned model, and evaluated on
   the test split.

``search`` restricts the candidates: ``nvit`` (structure only, to the budget), ``tokens`` (the
unpruned structure with a token plan) or ``joint`` (both), so each can be compared under the same
fine-tune budget. Everything goes to one output directory, replaced only when the run succeeds.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import schema

SEARCHES = ("joint", "nvit", "tokens")
DEFAULT_BACKEND, DEFAULT_BATCH = "onnxruntime", 64
"""What a run without a table is for."""
OUTPUT_FILES = ("model", "model.onnx", "model.export.json", "optimize.json", "optimize.md", "latency_table.json")


@schema
@dataclass
class OptimizeConfig:
    lut: str | None = None
    """Latency table measured for this model (``vitdeploy lut build --for MODEL``). Default: this
    machine's CPU table for the model at ``batch`` in ``latency_tables/``, built first if missing."""
    budget_ms: float | None = None
    """Latency budget (ms) at the table's batch, on the table's backend and device."""
    budget_ratio: float | None = None
    """The budget as a share of the unpruned model's latency measured at the start, instead of ``budget_ms``."""
    batch: int | None = None
    """The batch the budget is for; must be the table's (default: the table's, or 64 without ``lut``)."""
    backend: str | None = None
    """The backend the budget is for; must be the table's (default: the table's, or onnxruntime)."""
    data: str = "fashion-mnist"
    """Training split: importance, calibration, proxy scores and fine-tuning; test split: top-1."""
    resize: bool = False
    """Resize the data's images to the model's input size."""
    search: str = "joint"
    tokens: str = "star"
    """The token method whose knob is solved for the budget on each candidate structure."""
    width_step: float = 0.1
    """Structural candidates every this share of the unpruned predicted latency."""
    prune_step: float = 0.05
    """NViT: predicted latency removed per pruning step, as a share of the unpruned model's."""
    step_finetune_steps: int = 20
    """NViT: distilled fine-tuning steps after each pruning step."""
    finetune_steps: int = 300
    """Distilled fine-tuning steps of the chosen candidate, token plan active."""
    proxy_images: int = 2000
    """Training images the candidates' proxy top-1 is measured on."""
    calib_size: int = 256
    """Calibration images of the token method."""
    round_to: int = 8
    lr: float = 5e-4
    batch_size: int = 128
    eval_limit: int | None = None
    """Evaluate on the first N test images only."""
    seed: int = 0
    threads: int = 2

    def validate(self) -> "OptimizeConfig":
        from vitdeploy.prune.registry import all_methods

        token_methods = sorted(name for name, m in all_methods().items() if m.plan is not None and name != "a-star")
        if (self.budget_ms is None) == (self.budget_ratio is None):
            raise VitDeployError("give exactly one budget: --budget-ms MS or --budget-ratio R")
        if self.budget_ms is not None and not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise VitDeployError(f"--budget-ms must be a positive number of milliseconds, got {self.budget_ms}")
        if self.budget_ratio is not None and not 0 < self.budget_ratio < 1:
            raise VitDeployError(f"--budget-ratio must be between 0 and 1 (a share of the unpruned latency), "
                                 f"got {self.budget_ratio}")
        if self.search not in SEARCHES:
            raise VitDeployError(f"unknown --search {self.search!r}: choose one of {', '.join(SEARCHES)}")
        if self.tokens not in token_methods:
            raise VitDeployError(f"unknown --tokens {self.tokens!r}: choose one of {', '.join(token_methods)}")
        if not 0 < self.width_step < 1 or not 0 < self.prune_step < 1:
            raise VitDeployError("--width-step and --prune-step must be fractions between 0 and 1")
        if min(self.proxy_images, self.calib_size, self.round_to, self.batch_size, self.threads) < 1:
            raise VitDeployError("--proxy-images, --calib-size, --round-to, --batch-size and --threads must be ≥ 1")
        if min(self.step_finetune_steps, self.finetune_steps) < 0:
            raise VitDeployError("fine-tuning step counts cannot be negative")
        if not self.lr > 0:
            raise VitDeployError("--lr must be positive")
        return self


@dataclass
class Candidate:
    """One structure (an NViT snapshot) with the token plan that brings it under the budget."""

    name: str
    model: Any
    structure_ratio: float
    """The structure's predicted latency (no token plan) as a share of the unpruned model's."""
    token_report: dict | None = None
    predicted_ms: float = math.nan
    proxy_top1: float = math.nan

    def to_dict(self) -> dict:
        from vitdeploy.models.flops import total_macs
        from vitdeploy.prune.structural import dims_summary

        tokens = None
        if self.token_report is not None:
            tokens = {k: self.token_report[k] for k in ("method", "keep", "patch_tokens_entering")
                      if k in self.token_report}
            tokens["knob"] = {k: self.token_report[k] for k in ("rho", "epsilon", "rate") if k in self.token_report}
        return {"name": self.name, "structure_ratio": self.structure_ratio, "tokens": tokens,
                "predicted_ms": self.predicted_ms, "proxy_top1": self.proxy_top1,
                "macs": total_macs(self.model.spec), "dims": dims_summary(self.model.spec)}


def optimize(model, config: OptimizeConfig, out: str | Path, progress: bool = True, pipeline=None) -> dict:
    """Run the search and write ``out`` (see the module docstring); return optimize.json's content.
    ``pipeline`` (a ``vitdeploy.data.pipeline.Pipeline``) prepares image-folder training data."""
    from vitdeploy.io import atomic_dir, check_output_dir
    from vitdeploy.threads import torch_threads

    config.validate()
    check_output_dir(out, OUTPUT_FILES)
    with torch_threads(config.threads), atomic_dir(out, OUTPUT_FILES) as work:
        return _optimize(model, config, Path(work), progress, pipeline)


def _optimize(base, config: OptimizeConfig, work: Path, progress: bool, pipeline) -> dict:
    from vitdeploy.lut.measure import table_for_model
    from vitdeploy.lut.table import load_table, predict, save_table
    from vitdeploy.prune.structural import smallest_spec

    started = time.perf_counter()
    config = replace(config, lut=_table_file(base, config, progress))
    table, drift = table_for_model(config.lut, base, config.backend, config.batch)
    if config.budget_ms is None:
        config = replace(config, budget_ms=config.budget_ratio * drift.measured_ms)
    table_file = work / "latency_table.json"
    save_table(table, table_file)
    table = load_table(table_file)  # the rounded values every later step reads
    base_ms = predict(table, base.spec)["total_ms"]
    smallest = smallest_spec(base.spec, config.round_to)
    _require_reachable(base, smallest, table, config)
    data = _Data(base, config, pipeline)
    pruner, candidates, unreachable = _candidates(base, smallest, table, table_file, config, data, progress)
    for candidate in tqdm(candidates, desc="proxy top-1", disable=not progress):
        candidate.proxy_top1 = data.proxy_top1(candidate.model)
    chosen = max(candidates, key=lambda c: (c.proxy_top1, -c.predicted_ms))
    final = _finish(base, chosen, pruner, table, drift, config, data, work)
    result = {
        "model": base.spec.name, "config": asdict(config), "table": _table_summary(table, config.lut),
        "drift": drift.to_dict(), "unpruned_predicted_ms": base_ms,
        "candidates": [c.to_dict() for c in candidates], "unreachable": unreachable, "chosen": chosen.name,
        "final": final, "seconds": round(time.perf_counter() - started, 1),
    }
    _write_reports(result, work)
    return result


def _table_file(base, config: OptimizeConfig, progress: bool) -> str:
    """``config.lut``, or this machine's CPU table for the model, built now if there is none yet."""
    if config.lut is not None:
        return config.lut
    from vitdeploy import runtime
    from vitdeploy.backends import BuildConfig
    from vitdeploy.hardware import device_name
    from vitdeploy.lut import build_table_for, model_table_path, save_table

    backend, batch = config.backend or DEFAULT_BACKEND, config.batch or DEFAULT_BATCH
    path = model_table_path(device_name("cpu"), backend, "fp32", model=base.spec.name, batch=batch)
    if not path.exists():
        tqdm.write(f"no latency table for {base.spec.name} on this machine yet: building {path} (minutes)")
        build_config = BuildConfig(batch_sizes=(batch,), threads=config.threads).validate()
        runtime.current().from_main(lambda: save_table(
            build_table_for(base.spec, backend, build_config, batch, config.round_to, progress=progress), path))
    return str(path)


def _require_reachable(base, smallest, table, config: OptimizeConfig) -> None:
    """Refuse, before any pruning, a budget under the fastest model the search could make
    (``smallest``: the smallest structure NViT reaches)."""
    from vitdeploy.lut.table import predict
    from vitdeploy.models.token_plan import keep_plan_spec

    spec = smallest if config.search != "tokens" else base.spec
    if config.search != "nvit":
        spec = keep_plan_spec(spec, {0: 1})
    fastest = predict(table, spec)["total_ms"]
    if config.budget_ms < fastest:
        what = {"nvit": "every dim at its minimum", "tokens": "one patch token kept after block 1",
                "joint": "every dim at its minimum and one patch token kept after block 1"}[config.search]
        raise VitDeployError(f"--budget-ms {config.budget_ms:g} is below the fastest model this search can reach "
                             f"({fastest:.3g} ms predicted, {what}): give a budget of at least {fastest:.3g} ms"
                             + ("" if config.search == "joint" else " or --search joint"))


class _Data:
    """The training split (pruning, calibration, fine-tuning), the proxy sample and the test split."""

    def __init__(self, model, config: OptimizeConfig, pipeline=None):
        import torch
        from torch.utils.data import Subset

        from vitdeploy.data import dataset_for
        from vitdeploy.prune.calibrate import calibration_images

        self.config = config
        self.train = dataset_for(model, config.data, "train", resize=config.resize, pipeline=pipeline)
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(config.seed + 7))
        self.proxy = Subset(self.train, order[:config.proxy_images].tolist())
        self.test = dataset_for(model, config.data, "test", config.eval_limit, config.resize)
        self.calib_images = calibration_images(model, config.data, config.calib_size, config.seed, config.resize)

    def proxy_top1(self, model) -> float:
        from vitdeploy.evaluate import evaluate

        return evaluate(model, self.proxy)


def _candidates(base, smallest, table, table_file: Path, config: OptimizeConfig, data: _Data, progress: bool):
    """(the NViT pruner, candidates, unreachable ones): structures from one NViT run, each with the
    token plan that meets the budget (module docstring)."""
    from vitdeploy.lut.table import predict

    pruner = _pruner(base, table, table_file, config, data, progress)
    budget_ratio = config.budget_ms / pruner.base_cost
    floor_ratio = pruner.measure(smallest) / pruner.base_cost
    candidates, unreachable = [], []
    for ratio in _structure_ratios(config, max(budget_ratio, floor_ratio)):
        structure = copy.deepcopy(pruner.prune_to(ratio)) if ratio < 1 else base
        structure_ratio = pruner.measure(structure.spec) / pruner.base_cost
        name = "unpruned structure" if ratio >= 1 else f"nvit {structure_ratio:.2f}x"
        candidate = Candidate(name, structure, structure_ratio)
        if structure_ratio > budget_ratio:
            try:
                candidate.model, candidate.token_report = _token_plan(structure, table_file, config, data, progress)
            except VitDeployError as exc:  # this structure is too slow for any plan of the method
                unreachable.append({"name": name, "structure_ratio": structure_ratio, "reason": str(exc)})
                continue
            candidate.name += f" + {config.tokens}"
        candidate.predicted_ms = predict(table, candidate.model.spec)["total_ms"]
        candidates.append(candidate)
    if not candidates:
        raise VitDeployError(f"no candidate meets --budget-ms {config.budget_ms:g}: the {config.tokens} plan cannot "
                             "go low enough on any structure; give a larger budget or --search joint")
    return pruner, candidates, unreachable


def _structure_ratios(config: OptimizeConfig, budget_ratio: float) -> list[float]:
    """Shares of the unpruned predicted latency to snapshot the structure at, largest first, ending
    at ``budget_ratio`` (or the smallest structure NViT reaches, if that is larger)."""
    if config.search == "tokens":
        return [1.0]
    if config.search == "nvit":
        return [budget_ratio]
    ratios, ratio = [], 1.0
    while ratio > budget_ratio + 1e-9:
        ratios.append(ratio)
        ratio = round(ratio - config.width_step, 9)
    return [*ratios, budget_ratio]


def _pruner(base, table, table_file: Path, config: OptimizeConfig, data: _Data, progress: bool):
    from vitdeploy.prune.nvit_config import NViTConfig
    from vitdeploy.prune.structural import NViTPruner

    nvit = NViTConfig(target_flops=None, target_latency_ms=config.budget_ms, lut=str(table_file),
                      prune_step=config.prune_step, finetune_steps=config.step_finetune_steps,
                      final_finetune_steps=config.finetune_steps, round_to=config.round_to, lr=config.lr,
                      batch_size=config.batch_size, seed=config.seed, threads=config.threads)
    return NViTPruner(base, nvit, data.train, table, progress)


def _token_plan(structure, table_file: Path, config: OptimizeConfig, data: _Data, progress: bool):
    """(model, report): ``structure`` with the token plan meeting the budget; ``VitDeployError`` if
    the method cannot go that low."""
    from vitdeploy.prune.token_config import TokenPruneConfig
    from vitdeploy.prune.token_methods import prune_tokens

    tokens = TokenPruneConfig(method=config.tokens, target_latency_ms=config.budget_ms, lut=str(table_file),
                              calib_size=config.calib_size, seed=config.seed)
    return prune_tokens(structure, tokens, data.calib_images, progress=progress)


def _finish(base, chosen: Candidate, pruner, table, drift, config: OptimizeConfig, data: _Data, work: Path) -> dict:
    """Fine-tune, export, measure and evaluate the chosen candidate; save it into ``work``."""
    from vitdeploy.evaluate import evaluate
    from vitdeploy.export.config import ExportConfig
    from vitdeploy.export.onnx import export_onnx
    from vitdeploy.lut.measure import latency_check
    from vitdeploy.models.checkpoint import save_artifact

    model = chosen.model if chosen.model is not base else copy.deepcopy(base)
    tune = pruner.fine_tune(model, config.finetune_steps, "final fine-tune", seed_offset=10_000)
    target = "tensorrt" if table.metadata.backend == "tensorrt" else "onnxruntime"
    export = export_onnx(model, work / "model.onnx",
                         ExportConfig(target=target, parity_data=config.data, parity_resize=config.resize))
    latency = latency_check(table, drift, base, model, config.budget_ms)
    top1 = {"unpruned": evaluate(base, data.test), "optimized": evaluate(model, data.test)}
    save_artifact(model, work / "model")
    return {"latency": latency, "top1": top1, "proxy_top1": chosen.proxy_top1, "fine_tune": tune,
            "export": {"parity_max_abs_diff": export.parity.max_abs_diff, "audit_passed": export.audit.passed},
            "spec": model.spec.to_dict()}


def _table_summary(table, path: str) -> dict:
    meta = table.metadata
    return {"path": path, "device": meta.device, "backend": meta.backend, "precision": meta.precision,
            "batch": meta.batch, "threads": meta.threads, "created": meta.created, "grid": meta.grid.get("name")}


def summary_table(result: dict) -> str:
    """The candidates (predicted latency, proxy top-1), then the chosen model against the unpruned
    one in one table: latency predicted and measured (interleaved, one run) and test top-1."""
    from vitdeploy.tables import format_table

    candidates = [[("* " if c["name"] == result["chosen"] else "  ") + c["name"], f"{c['structure_ratio']:.2f}",
                   _keep_text(c["tokens"]), f"{c['predicted_ms']:.2f}", f"{c['proxy_top1']:.4f}"]
                  for c in result["candidates"]]
    final, table = result["final"], result["table"]
    latency, top1 = final["latency"], final["top1"]
    models = [["unpruned", f"{latency['unpruned_measured_ms']:.2f}", f"{latency['unpruned_measured_ms']:.2f}", "1.000",
               f"{top1['unpruned']:.4f}"],
              [f"optimized ({result['chosen']})", f"{latency['predicted_ms']:.2f}", f"{latency['measured_ms']:.2f}",
               f"{latency['measured_ratio']:.3f}", f"{top1['optimized']:.4f}"]]
    return "\n".join([
        format_table(["candidate", "structure", "keep per block", "predicted ms", "proxy top-1"], candidates),
        "",
        format_table(["model", "predicted ms", "measured ms", "× unpruned", "test top-1"], models),
        "",
        f"batch {table['batch']}, {table['backend']}, {table['threads']} thread(s); measured interleaved in one run, "
        f"predictions rescaled to this run's unpruned latency: off by {latency['prediction_error_pct']:.1f} %",
        f"budget {latency['target_ms']:.2f} ms = {latency['target_ratio']:.3f}× the unpruned latency measured at the "
        f"start ({result['drift']['measured_ms']:.2f} ms; the table predicted {result['drift']['predicted_ms']:.2f} "
        f"ms): reached {latency['measured_ratio']:.3f}× ({latency['target_error_pct']:+.1f} %), "
        f"{latency['speedup']:.2f}× faster",
        f"fine-tuned {final['fine_tune']['steps']} steps, distilled from the unpruned model, token plan active; "
        f"export parity {final['export']['parity_max_abs_diff']:.1e}",
    ])


def _keep_text(tokens: dict | None) -> str:
    if not tokens:
        return "-"
    return " ".join("-" if keep is None else str(keep) for keep in tokens["keep"])


def _write_reports(result: dict, work: Path) -> None:
    from vitdeploy.io import write_bytes_atomic, write_json_atomic

    write_json_atomic(work / "optimize.json", result)
    write_bytes_atomic(work / "optimize.md", (summary_table(result) + "\n").encode())

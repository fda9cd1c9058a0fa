"""The optimiser's run, stage by stage (see the package docstring), into one output directory."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from vitdeploy.errors import VitDeployError
from vitdeploy.optimize.candidates import Candidate, Search, make_candidates, savings_scale
from vitdeploy.optimize.config import DEFAULT_BACKEND, DEFAULT_BATCH, OptimizeConfig
from vitdeploy.optimize.halving import rank_correlation, ranking, successive_halving
from vitdeploy.optimize.report import write_reports

OUTPUT_FILES = ("model", "model.onnx", "model.export.json", "optimize.json", "optimize.md", "latency_table.json")
FINAL_TOLERANCE = 0.03
"""The chosen model may measure at most this share over the budget; otherwise the next one down is tried."""
MAX_FINAL_ATTEMPTS = 3
ROUND_SEED, FINAL_SEED = 10_000, 20_000
"""Fine-tuning seed offsets: every candidate in a round sees the same data order."""


def optimize(model, config: OptimizeConfig, out: str | Path, progress: bool = True, pipeline=None) -> dict:
    """Run the search and write ``out`` (see the package docstring); return optimize.json's content.
    ``pipeline`` (a ``vitdeploy.data.pipeline.Pipeline``) prepares image-folder training data."""
    from vitdeploy.io import atomic_dir, check_output_dir
    from vitdeploy.threads import torch_threads

    config.validate()
    check_output_dir(out, OUTPUT_FILES)
    with torch_threads(config.threads), atomic_dir(out, OUTPUT_FILES) as work:
        return _optimize(model, config, Path(work), progress, pipeline)


@contextmanager
def _timed(seconds: dict, stage: str):
    started = time.perf_counter()
    yield
    seconds[stage] = round(time.perf_counter() - started, 1)


def _optimize(base, config: OptimizeConfig, work: Path, progress: bool, pipeline) -> dict:
    from vitdeploy.lut.measure import table_for_model
    from vitdeploy.lut.table import load_table, save_table
    from vitdeploy.prune.structural import smallest_spec

    started, seconds = time.perf_counter(), {}
    with _timed(seconds, "table"):
        config = replace(config, lut=_table_file(base, config, progress))
        table, drift = table_for_model(config.lut, base, config.backend, config.batch)
    if config.budget_ms is None:
        config = replace(config, budget_ms=config.budget_ratio * drift.measured_ms)
    table_file = work / "latency_table.json"
    save_table(table, table_file)
    table = load_table(table_file)  # the rounded values every later step reads
    smallest = smallest_spec(base.spec, config.round_to)
    _require_reachable(base, smallest, table, config)
    data = _Data(base, config, pipeline)
    pruner = _pruner(base, table, table_file, config, data, progress)
    search = Search(base, table, str(table_file), pruner, data.calib_images, config.budget_ms,
                    config.budget_ms / drift.measured_ms, config, progress)
    with _timed(seconds, "candidates"):
        candidates, dropped = make_candidates(search, pruner.measure(smallest) / pruner.base_cost)
    for candidate in candidates:
        candidate.weights = {k: v.detach().clone() for k, v in candidate.model.state_dict().items()}
        if config.check_ranking:
            candidate.untuned_proxy = data.proxy_top1(candidate.model)
    with _timed(seconds, "halving"):
        rounds = successive_halving(candidates, lambda c, steps, index: _tune(pruner, c, steps, ROUND_SEED + index),
                                    lambda c: data.proxy_top1(c.model), config.rung_steps, config.finetune_steps)
    ranked = ranking(candidates)
    with _timed(seconds, "final"):
        chosen, final = _finish(search, ranked, drift, data, work)
    ranking_check = None
    if config.check_ranking:
        with _timed(seconds, "ranking check"):
            ranking_check = _check_ranking(pruner, candidates, rounds, data)
    seconds["total"] = round(time.perf_counter() - started, 1)
    result = {
        "model": base.spec.name, "assumed": list(getattr(base, "assumptions", [])), "config": asdict(config),
        "table": _table_summary(table, config.lut),
        "drift": drift.to_dict(), "budget_ratio": search.budget_ratio, "savings_scale": savings_scale(candidates),
        "candidates": [c.to_dict() for c in ranked], "dropped": dropped, "rounds": rounds, "chosen": chosen.name,
        "final": final, "ranking_check": ranking_check, "seconds": seconds,
    }
    write_reports(result, work)
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
    """The training split less the proxy sample (pruning, calibration, fine-tuning), the proxy
    sample (its last ``proxy_images`` images, never trained on) and the test split."""

    def __init__(self, model, config: OptimizeConfig, pipeline=None):
        from vitdeploy.data import dataset_for, holdout_split
        from vitdeploy.prune.calibrate import calibration_images

        self.train, self.proxy = holdout_split(
            dataset_for(model, config.data, "train", resize=config.resize, pipeline=pipeline), config.proxy_images)
        self.test = dataset_for(model, config.data, "test", config.eval_limit, config.resize)
        self.calib_images = calibration_images(model, config.data, config.calib_size, config.seed, config.resize)

    def proxy_top1(self, model) -> float:
        from vitdeploy.evaluate import evaluate

        return evaluate(model, self.proxy)


def _pruner(base, table, table_file: Path, config: OptimizeConfig, data: _Data, progress: bool):
    from vitdeploy.prune.nvit_config import NViTConfig
    from vitdeploy.prune.structural import NViTPruner

    nvit = NViTConfig(target_flops=None, target_latency_ms=config.budget_ms, lut=str(table_file),
                      prune_step=config.prune_step, finetune_steps=config.step_finetune_steps,
                      final_finetune_steps=config.finetune_steps, round_to=config.round_to, lr=config.lr,
                      batch_size=config.batch_size, seed=config.seed, threads=config.threads)
    return NViTPruner(base, nvit, data.train, table, progress)


def _tune(pruner, candidate: Candidate, steps: int, seed_offset: int) -> None:
    """Fine-tune ``candidate`` in place for ``steps`` more steps (distilled, its token plan active)."""
    pruner.fine_tune(candidate.model, steps, f"fine-tune {candidate.name}", seed_offset=seed_offset)
    candidate.tuned_steps += steps


def _full_fine_tune(pruner, candidate: Candidate) -> None:
    """The full fine-tune (``finetune_steps``) from the weights the candidate had before the race:
    the one a plain ``prune`` run gives its result."""
    candidate.model.load_state_dict(candidate.weights)
    candidate.tuned_steps = 0
    _tune(pruner, candidate, pruner.config.final_finetune_steps, FINAL_SEED)


def _finish(search: Search, ranked: list[Candidate], drift, data: _Data, work: Path) -> tuple[Candidate, dict]:
    """Fine-tune, export and measure the best candidate; while it measures over the budget by more
    than ``FINAL_TOLERANCE``, the next candidate down (the best one measured faster before) takes
    its place, up to ``MAX_FINAL_ATTEMPTS``. Save the last one tried into ``work``."""
    from vitdeploy.evaluate import evaluate
    from vitdeploy.models.checkpoint import save_artifact

    candidate, attempts = ranked[0], []
    while True:
        export, latency = _export_and_measure(search, candidate, drift, work)
        within = latency["target_error_pct"] <= 100 * FINAL_TOLERANCE
        attempts.append({"candidate": candidate.name, "measured_ratio": latency["measured_ratio"],
                         "target_error_pct": latency["target_error_pct"], "within_budget": within})
        faster = next((c for c in ranked if c.measured_ratio < candidate.measured_ratio), None)
        if within or faster is None or len(attempts) == MAX_FINAL_ATTEMPTS:
            break
        tqdm.write(f"{candidate.name} measured {latency['target_error_pct']:+.1f} % against the budget: "
                   f"trying {faster.name}")
        candidate = faster
    model = candidate.model
    top1 = {"unpruned": evaluate(search.base, data.test), "optimized": evaluate(model, data.test)}
    candidate.test_top1 = top1["optimized"]
    save_artifact(model, work / "model")
    if not within:
        tqdm.write(f"warning: no candidate measured within {100 * FINAL_TOLERANCE:g} % of the budget in "
                   f"{len(attempts)} attempts; kept {candidate.name} ({latency['target_error_pct']:+.1f} %)")
    return candidate, {
        "latency": latency, "within_budget": within, "attempts": attempts, "top1": top1,
        "proxy_top1": candidate.proxies[-1], "fine_tune_steps": candidate.tuned_steps,
        "export": {"parity_max_abs_diff": export.parity.max_abs_diff, "audit_passed": export.audit.passed},
        "spec": model.spec.to_dict()}


def _export_and_measure(search: Search, candidate: Candidate, drift, work: Path):
    """(export report, latency check) of ``candidate`` after its full fine-tune."""
    from vitdeploy.backends import get_backend
    from vitdeploy.export.config import ExportConfig
    from vitdeploy.export.onnx import export_onnx
    from vitdeploy.lut.measure import latency_check

    _full_fine_tune(search.pruner, candidate)
    target = get_backend(search.table.metadata.backend, require_available=False).export_target
    export = export_onnx(candidate.model, work / "model.onnx", ExportConfig(
        target=target, parity_data=search.config.data, parity_resize=search.config.resize))
    latency = latency_check(search.table, drift, search.base, candidate.model, search.budget_ms)
    return export, latency


def _check_ranking(pruner, candidates: list[Candidate], rounds: list[dict], data: _Data) -> dict:
    """Every candidate fully fine-tuned and evaluated on the test split; the rank correlation of
    the proxy with test top-1 before any fine-tune and after each round."""
    from vitdeploy.evaluate import evaluate

    for candidate in tqdm(candidates, desc="ranking check: full fine-tune of every candidate",
                          disable=not pruner.progress):
        if candidate.test_top1 is None:
            _full_fine_tune(pruner, candidate)
            candidate.test_top1 = evaluate(candidate.model, data.test)
    test = {c.name: c.test_top1 for c in candidates}
    untuned = [c for c in candidates if c.untuned_proxy is not None]
    correlations = [{"steps": 0, "candidates": len(untuned), "spearman": rank_correlation(
        [c.untuned_proxy for c in untuned], [c.test_top1 for c in untuned])}]
    for round_ in rounds:
        names = list(round_["proxy"])
        correlations.append({"steps": round_["steps"], "candidates": len(names), "spearman": rank_correlation(
            [round_["proxy"][n] for n in names], [test[n] for n in names])})
    best = max(candidates, key=lambda c: c.test_top1)
    return {"test_top1": test, "correlations": correlations, "best_by_test": best.name}


def _table_summary(table, path: str) -> dict:
    meta = table.metadata
    return {"path": path, "device": meta.device, "backend": meta.backend, "precision": meta.precision,
            "batch": meta.batch, "threads": meta.threads, "created": meta.created, "grid": meta.grid.get("name")}

"""The optimiser's run, stage by stage (see the package docstring), into one output directory."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from vitdeploy.errors import VitDeployError
from vitdeploy.optimize.candidates import Candidate, Search, make_candidates, require_candidates, savings_scale
from vitdeploy.optimize.config import DEFAULT_BACKEND, DEFAULT_BATCH, FLOAT, INT8, OptimizeConfig
from vitdeploy.optimize.halving import rank_correlation, ranking, successive_halving
from vitdeploy.optimize.report import write_reports

OUTPUT_FILES = ("model", "model.onnx", "model.export.json", "model.quantize.json", "optimize.json", "optimize.md",
                "latency_table.json", "latency_table.int8.json")
TABLE_FILES = {FLOAT: "latency_table.json", INT8: "latency_table.int8.json"}
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
    from vitdeploy.prune.methods.nvit.structural import smallest_spec

    started, seconds = time.perf_counter(), {}
    with _timed(seconds, "table"):
        config, tables = _tables(base, config, progress)
    drift = tables[FLOAT][1]
    if config.budget_ms is None:
        config = replace(config, budget_ms=config.budget_ratio * drift.measured_ms)
    smallest = smallest_spec(base.spec, config.round_to)
    _require_reachable(base, smallest, [table for table, _ in tables.values()], config)
    data = _Data(base, config, pipeline)
    searches = [_search(base, config, precision, table, drift, work, data, progress)
                for precision, (table, drift) in tables.items()]
    candidates, dropped = [], []
    with _timed(seconds, "candidates"):
        for search in searches:
            made, unmade = make_candidates(search, search.pruner.measure(smallest) / search.pruner.base_cost)
            candidates += made
            dropped += unmade
    require_candidates(candidates, dropped, config)
    for candidate in candidates:
        candidate.weights = {k: v.detach().clone() for k, v in candidate.model.state_dict().items()}
        if config.check_ranking:
            candidate.untuned_proxy = data.proxy_top1(candidate.model)
    with _timed(seconds, "halving"):
        rounds = successive_halving(candidates, lambda c, steps, index: _tune(c, steps, ROUND_SEED + index),
                                    lambda c: data.proxy_top1(c.model), config.rung_steps, config.finetune_steps)
    ranked = ranking(candidates)
    with _timed(seconds, "final"):
        chosen, final = _finish(ranked, data, work)
    ranking_check = None
    if config.check_ranking:
        with _timed(seconds, "ranking check"):
            ranking_check = _check_ranking(candidates, rounds, data)
    seconds["total"] = round(time.perf_counter() - started, 1)
    float_search = next(search for search in searches if search.precision == FLOAT)
    result = {
        "model": base.spec.name, "assumed": list(getattr(base, "assumptions", [])), "config": asdict(config),
        "table": _table_summary(float_search.table, config.lut),
        "tables": {s.precision: _table_summary(s.table, s.table_file) for s in searches},
        "drift": drift.to_dict(), "drifts": {s.precision: s.drift.to_dict() for s in searches},
        "budget_ratio": float_search.budget_ratio, "budget_ratios": {s.precision: s.budget_ratio for s in searches},
        "savings_scale": savings_scale(candidates),
        "candidates": [c.to_dict() for c in ranked], "dropped": dropped, "rounds": rounds, "chosen": chosen.name,
        "final": final, "ranking_check": ranking_check, "seconds": seconds,
    }
    write_reports(result, work)
    return result


def _tables(base, config: OptimizeConfig, progress: bool) -> tuple[OptimizeConfig, dict]:
    """The config with every table's path filled in, and per precision (drift-corrected table, drift);
    every table is checked before any is measured."""
    from vitdeploy.lut.measure import checked_table, drift_corrected

    paths = {precision: _table_file(base, config, precision, progress) for precision in config.precision_list}
    config = replace(config, lut=paths[FLOAT], int8_lut=paths.get(INT8))
    tables = {precision: checked_table(path, base, config.backend, config.batch, int8=precision == INT8)
              for precision, path in paths.items()}
    return config, {precision: drift_corrected(table, base) for precision, table in tables.items()}


def _search(base, config: OptimizeConfig, precision: str, table, drift, work: Path, data: "_Data",
            progress: bool) -> Search:
    """The search of one precision: its table (saved into ``work``, whose rounded values every
    later step reads), its NViT pruner, and the budget as a share of its unpruned model."""
    from vitdeploy.lut.table import load_table, save_table

    table_file = work / TABLE_FILES[precision]
    save_table(table, table_file)
    table = load_table(table_file)
    pruner = _pruner(base, table, table_file, precision, config, data, progress)
    return Search(base, table, str(table_file), pruner, data.calib_images, config.budget_ms,
                  config.budget_ms / drift.measured_ms, config, progress, precision, drift)


def _table_file(base, config: OptimizeConfig, precision: str, progress: bool) -> str:
    """The table given for ``precision``, or this machine's CPU table for the model, built now if
    there is none yet."""
    given = config.int8_lut if precision == INT8 else config.lut
    if given is not None:
        return given
    from vitdeploy import runtime
    from vitdeploy.backends import BuildConfig
    from vitdeploy.hardware import device_name
    from vitdeploy.lut import build_table_for, model_table_path, save_table

    backend, batch = config.backend or DEFAULT_BACKEND, config.batch or DEFAULT_BATCH
    path = model_table_path(device_name("cpu"), backend, precision, model=base.spec.name, batch=batch)
    if not path.exists():
        tqdm.write(f"no {precision} latency table for {base.spec.name} on this machine yet: building {path} (minutes)")
        build_config = BuildConfig(batch_sizes=(batch,), threads=config.threads).validate()
        runtime.current().from_main(lambda: save_table(
            build_table_for(base.spec, backend, build_config, batch, config.round_to, progress=progress,
                            int8=precision == INT8), path))
    return str(path)


def _require_reachable(base, smallest, tables: list, config: OptimizeConfig) -> None:
    """Refuse, before any pruning, a budget under the fastest model the search could make
    (``smallest``: the smallest structure NViT reaches) at any of its precisions."""
    from vitdeploy.lut.table import predict
    from vitdeploy.models.token_plan import keep_plan_spec

    spec = smallest if config.search != "tokens" else base.spec
    if config.search != "nvit":
        spec = keep_plan_spec(spec, {0: 1})
    fastest = min(predict(table, spec)["total_ms"] for table in tables)
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


def _pruner(base, table, table_file: Path, precision: str, config: OptimizeConfig, data: _Data, progress: bool):
    from vitdeploy.prune.methods.nvit.config import NViTConfig
    from vitdeploy.prune.methods.nvit.structural import NViTPruner

    nvit = NViTConfig(target_flops=None, target_latency_ms=config.budget_ms, lut=str(table_file),
                      latency_precision=precision,
                      prune_step=config.prune_step, finetune_steps=config.step_finetune_steps,
                      final_finetune_steps=config.finetune_steps, round_to=config.round_to, lr=config.lr,
                      batch_size=config.batch_size, seed=config.seed, threads=config.threads)
    return NViTPruner(base, nvit, data.train, table, progress)


def _tune(candidate: Candidate, steps: int, seed_offset: int) -> None:
    """Fine-tune ``candidate`` in place for ``steps`` more steps (distilled, its token plan active)."""
    candidate.search.pruner.fine_tune(candidate.model, steps, f"fine-tune {candidate.name}", seed_offset=seed_offset)
    candidate.tuned_steps += steps


def _full_fine_tune(candidate: Candidate) -> None:
    """The full fine-tune (``finetune_steps``) from the weights the candidate had before the race:
    the one a plain ``prune`` run gives its result."""
    candidate.model.load_state_dict(candidate.weights)
    candidate.tuned_steps = 0
    _tune(candidate, candidate.search.pruner.config.final_finetune_steps, FINAL_SEED)


def _finish(ranked: list[Candidate], data: _Data, work: Path) -> tuple[Candidate, dict]:
    """Fine-tune, write (export, or quantize for an INT8 candidate) and measure the best candidate.
    While it measures over the budget by more than ``FINAL_TOLERANCE``, the next candidate down (the
    best one measured faster before) takes its place; an INT8 candidate that loses more than
    ``max_drop`` points is passed over for the next one in the ranking; at most ``MAX_FINAL_ATTEMPTS``
    are finished. The last one finished is saved into ``work``."""
    from vitdeploy.evaluate import evaluate
    from vitdeploy.models.checkpoint import save_artifact

    candidate, attempts, kept = ranked[0], [], None
    while candidate is not None and len(attempts) < MAX_FINAL_ATTEMPTS:
        try:
            written = _write_model(candidate, data, work)
        except VitDeployError as refused:
            attempts.append({"candidate": candidate.name, "refused": str(refused), "within_budget": False})
            candidate = _next_candidate(ranked, attempts)
            continue
        latency = _latency_check(candidate)
        kept = candidate, written, latency
        within = latency["target_error_pct"] <= 100 * FINAL_TOLERANCE
        attempts.append({"candidate": candidate.name, "measured_ratio": latency["measured_ratio"],
                         "target_error_pct": latency["target_error_pct"], "within_budget": within})
        if within:
            break
        slower = candidate
        candidate = _next_candidate(ranked, attempts, faster_than=slower)
        if candidate is not None:
            tqdm.write(f"{slower.name} measured {latency['target_error_pct']:+.1f} % against the budget: "
                       f"trying {candidate.name}")
    if kept is None:
        raise VitDeployError("no candidate could be finished: " + "; ".join(
            f"{a['candidate']}: {a['refused']}" for a in attempts))
    candidate, written, latency = kept
    top1 = {"unpruned": evaluate(candidate.search.base, data.test), "optimized": evaluate(candidate.model, data.test)}
    if written.get("int8") is not None:
        top1 = {**top1, "optimized_float": top1["optimized"], "optimized": written["int8"]["accuracy"]["int8_top1"]}
    candidate.test_top1 = top1["optimized"]
    save_artifact(candidate.model, work / "model")
    if not attempts[-1]["within_budget"]:
        tqdm.write(f"warning: no candidate measured within {100 * FINAL_TOLERANCE:g} % of the budget in "
                   f"{len(attempts)} attempts; kept {candidate.name} ({latency['target_error_pct']:+.1f} %)")
    return candidate, {
        "precision": candidate.precision, "latency": latency, "within_budget": attempts[-1]["within_budget"],
        "attempts": attempts, "top1": top1, "proxy_top1": candidate.proxies[-1],
        "fine_tune_steps": candidate.tuned_steps, **written, "spec": candidate.model.spec.to_dict()}


def _next_candidate(ranked: list[Candidate], attempts: list[dict], faster_than: Candidate | None = None):
    """The best-ranked candidate not tried yet (and, after one over the budget, measured faster)."""
    tried = {a["candidate"] for a in attempts}
    return next((c for c in ranked if c.name not in tried
                 and (faster_than is None or c.budget_share < faster_than.budget_share)), None)


def _write_model(candidate: Candidate, data: _Data, work: Path) -> dict:
    """Give ``candidate`` its full fine-tune and write ``work/model.onnx``: the checked export, or for
    an INT8 candidate the Q/DQ graph with its accuracy check (``VitDeployError`` if it loses more
    than ``max_drop`` points; nothing is written then). Returns the checks' figures."""
    from vitdeploy.backends import get_backend
    from vitdeploy.export.config import ExportConfig
    from vitdeploy.export.onnx import export_onnx

    search, config = candidate.search, candidate.search.config
    _full_fine_tune(candidate)
    target = get_backend(search.table.metadata.backend, require_available=False).export_target
    if candidate.precision == INT8:
        int8 = _quantize(candidate, config, target, work / "model.onnx")
        (work / "model.export.json").unlink(missing_ok=True)
        return {"export": {"parity_max_abs_diff": None, "audit_passed": int8["audit"]["passed"]}, "int8": int8}
    export = export_onnx(candidate.model, work / "model.onnx", ExportConfig(
        target=target, parity_data=config.data, parity_resize=config.resize))
    (work / "model.quantize.json").unlink(missing_ok=True)
    return {"export": {"parity_max_abs_diff": export.parity.max_abs_diff, "audit_passed": export.audit.passed},
            "int8": None}


def _quantize(candidate: Candidate, config: OptimizeConfig, target: str, out: Path) -> dict:
    """``vitdeploy quantize`` of the candidate with its default settings for ``target``, calibrated
    on the training data and checked on the test split; its report."""
    from vitdeploy.quantize.config import QuantizeConfig
    from vitdeploy.quantize.ptq import quantize_model

    settings = QuantizeConfig(target=target, max_drop=config.max_drop, eval_limit=config.eval_limit)
    report = quantize_model(candidate.model, out, settings, config.data, config.data, config.resize,
                            progress=candidate.search.progress)
    return report.to_dict()


def _latency_check(candidate: Candidate) -> dict:
    """The candidate timed interleaved with the unpruned model, in its search's precision."""
    from vitdeploy.lut.measure import latency_check

    search = candidate.search
    return latency_check(search.table, search.drift, search.base, candidate.model, search.budget_ms)


def _check_ranking(candidates: list[Candidate], rounds: list[dict], data: _Data) -> dict:
    """Every candidate fully fine-tuned and evaluated on the test split; the rank correlation of
    the proxy with test top-1 before any fine-tune and after each round."""
    from vitdeploy.evaluate import evaluate

    for candidate in tqdm(candidates, desc="ranking check: full fine-tune of every candidate",
                          disable=not candidates[0].search.progress):
        if candidate.test_top1 is None:
            _full_fine_tune(candidate)
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

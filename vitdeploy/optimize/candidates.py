"""Candidates under the budget, each one measured, not only predicted.

The candidates are NViT snapshots taken every ``width_step`` of the unpruned predicted latency,
each with the token plan (``tokens``) solved for the budget on it; NViT alone at the budget, pruned
on ``vitdeploy prune nvit``'s schedule; and each token method of ``alone`` on the unpruned
structure. The last two kinds are the single-method runs the choice has to beat.

Every candidate is timed interleaved with the unpruned model, as a ratio to it. One that measures
over the budget is made again for a goal corrected by its measurements
(``vitdeploy.lut.measure.corrected_goal``: scaled by the miss, then a secant step), and the token
plan is re-solved or, for NViT alone, the structure pruned further. A candidate still over after
``MEASURED_PLANS`` measurements is dropped, with the reason.

With INT8 in the search, each precision has its own ``Search``: its own latency table (INT8
tables time Q/DQ graphs), pruner and unpruned reference, so an INT8 candidate is measured as a
quantized graph against the quantized unpruned model, and its budget share (measured ratio over
its search's budget ratio) compares with a float candidate's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from vitdeploy.errors import VitDeployError

NVIT_ALONE, TOKENS_ALONE, JOINT = "nvit alone", "tokens alone", "joint"
SINGLE_METHODS = (NVIT_ALONE, TOKENS_ALONE)


@dataclass(frozen=True)
class Measurement:
    predicted_ratio: float
    measured_ratio: float
    """Both as a share of the unpruned model's latency; measured interleaved with it in one run."""


@dataclass
class Candidate:
    """A model under the budget, how it was made, its measurements and its proxy scores."""

    name: str
    kind: str
    """``nvit alone``, ``tokens alone`` or ``joint`` (an NViT snapshot with a token plan)."""
    model: Any
    structure_ratio: float
    """The structure's predicted latency (no token plan) as a share of the unpruned model's."""
    remake: Callable[[float], tuple[Any, dict | None]] = field(repr=False)
    """goal (predicted ratio) → (model, token report): the candidate made again for a lower goal."""
    token_report: dict | None = None
    measurements: list[Measurement] = field(default_factory=list)
    proxies: list[float] = field(default_factory=list)
    """Proxy top-1 after each round of successive halving it took part in."""
    weights: dict | None = field(default=None, repr=False)
    """Its state dict before the race: where the chosen one's full fine-tune starts."""
    tuned_steps: int = 0
    untuned_proxy: float | None = None
    """Proxy top-1 before any fine-tune (only when the ranking is checked)."""
    test_top1: float | None = None
    """Test top-1 after the full fine-tune (the chosen one; every one when the ranking is checked)."""
    search: Search | None = field(default=None, repr=False)
    """The search that made it: its precision, table, pruner and budget."""

    @property
    def measured_ratio(self) -> float:
        return self.measurements[-1].measured_ratio

    @property
    def precision(self) -> str:
        return self.search.precision

    @property
    def budget_share(self) -> float:
        """Its measured latency as a share of the budget, comparable across precisions."""
        return self.measured_ratio / self.search.budget_ratio

    def to_dict(self) -> dict:
        from vitdeploy.models.flops import total_macs
        from vitdeploy.prune.registry import METHODS
        from vitdeploy.prune.methods.nvit.structural import dims_summary

        tokens = None
        if self.token_report is not None:
            tokens = {k: self.token_report[k] for k in ("method", "keep", "patch_tokens_entering")
                      if k in self.token_report}
            knobs = METHODS.get(self.token_report["method"]).knobs
            tokens["knob"] = {k: self.token_report[k] for k in knobs if k in self.token_report and k not in tokens}
        return {"name": self.name, "kind": self.kind, "precision": self.precision,
                "structure_ratio": self.structure_ratio, "tokens": tokens, "budget_share": self.budget_share,
                "measurements": [asdict(m) for m in self.measurements], "proxies": self.proxies,
                "tuned_steps": self.tuned_steps, "untuned_proxy": self.untuned_proxy, "test_top1": self.test_top1,
                "macs": total_macs(self.model.spec), "dims": dims_summary(self.model.spec)}


@dataclass
class Search:
    """What making candidates needs: the unpruned model, the drift-corrected table (and its file,
    which the pruning methods read), the NViT pruner, the calibration images and the budget."""

    base: Any
    table: Any
    table_file: str
    pruner: Any
    calib_images: Any
    budget_ms: float
    budget_ratio: float
    """The budget as a share of the unpruned latency measured at the start (at this search's precision)."""
    config: Any
    progress: bool = True
    precision: str = "fp32"
    drift: Any = None
    """The table's drift correction: the unpruned model measured at the start."""

    def label(self, name: str) -> str:
        """A candidate's name, marked with the precision when it is not fp32."""
        return name if self.precision == "fp32" else f"{self.precision} {name}"

    def predicted_ratio(self, model) -> float:
        from vitdeploy.lut.table import predict

        return predict(self.table, model.spec)["total_ms"] / self.base_ms

    @cached_property
    def base_ms(self) -> float:
        """The unpruned model's predicted latency under the (drift-corrected) table."""
        from vitdeploy.lut.table import predict

        return predict(self.table, self.base.spec)["total_ms"]

    def structure_ratio(self, model) -> float:
        """The predicted latency of ``model``'s structure (no token plan), as a share of the unpruned one's."""
        return self.pruner.measure(model.spec.with_token_plan({})) / self.pruner.base_cost


class Unreachable(VitDeployError):
    """A candidate that cannot be made under the budget (``name`` says which)."""

    def __init__(self, name: str, reason: str):
        super().__init__(reason)
        self.name = name


def make_candidates(search: Search, floor_ratio: float) -> tuple[list[Candidate], list[dict]]:
    """(candidates measured within the budget, the ones dropped and why); ``floor_ratio``: the
    smallest structure NViT reaches, as a share of the unpruned predicted latency."""
    candidates, dropped = [], []
    for make in _makers(search, floor_ratio):
        try:
            candidates.append(make())
        except Unreachable as exc:
            dropped.append({"name": exc.name, "reason": str(exc)})
    candidates, over = measure_within_budget(search, candidates)
    return candidates, dropped + over


def require_candidates(candidates: list[Candidate], dropped: list[dict], config) -> None:
    """Refuse a search that left no candidate, with every reason."""
    if not candidates:
        other_search = "" if config.search == "joint" else " or --search joint"
        raise VitDeployError(f"no candidate meets --budget-ms {config.budget_ms:g} when measured: "
                             + "; ".join(f"{d['name']}: {d['reason']}" for d in dropped)
                             + f"; give a larger budget{other_search}")


def _makers(search: Search, floor_ratio: float) -> list[Callable[[], Candidate]]:
    """One function per candidate, in the order they are made: NViT snapshots largest first (the
    pruner runs once, down to NViT alone), then the token methods alone."""
    config, makers = search.config, []
    ratios = structure_ratios(config.search, config.width_step, max(search.budget_ratio, floor_ratio))
    for ratio in ratios:
        makers.append(lambda ratio=ratio: _snapshot(search, ratio))
    unpruned_with = {config.tokens} if ratios and ratios[0] >= 1 else set()
    for method in config.alone_methods:
        if method not in unpruned_with:
            makers.append(lambda method=method: _tokens_alone(search, method))
    return makers


def structure_ratios(search: str, width_step: float, budget_ratio: float) -> list[float]:
    """Shares of the unpruned predicted latency to snapshot the structure at, largest first, ending
    at ``budget_ratio`` (or the smallest structure NViT reaches, if that is larger)."""
    if search == "tokens":
        return [1.0]
    if search == "nvit":
        return [budget_ratio]
    ratios, ratio = [], 1.0
    while ratio > budget_ratio + 1e-9:
        ratios.append(ratio)
        ratio = round(ratio - width_step, 9)
    return [*ratios, budget_ratio]


def _snapshot(search: Search, ratio: float) -> Candidate:
    """The NViT structure at ``ratio``: alone if it is under the budget, else with the token plan."""
    structure = copy.deepcopy(search.pruner.prune_to(ratio)) if ratio < 1 else search.base
    structure_ratio = search.structure_ratio(structure)
    if structure_ratio <= search.budget_ratio + 1e-9:
        def trim(goal: float) -> tuple[Any, None]:
            return copy.deepcopy(search.pruner.prune_to(goal)), None

        return Candidate(search.label(f"nvit {structure_ratio:.2f}x"), NVIT_ALONE, structure, structure_ratio, trim,
                         search=search)
    method = search.config.tokens
    name = search.label(("unpruned" if ratio >= 1 else f"nvit {structure_ratio:.2f}x") + f" + {method}")
    kind = TOKENS_ALONE if ratio >= 1 else JOINT
    return _with_plan(search, name, kind, structure, structure_ratio, method)


def _tokens_alone(search: Search, method: str) -> Candidate:
    return _with_plan(search, search.label(f"unpruned + {method}"), TOKENS_ALONE, search.base, 1.0, method)


def _with_plan(search: Search, name: str, kind: str, structure, structure_ratio: float, method: str) -> Candidate:
    def plan(goal: float) -> tuple[Any, dict]:
        return _token_plan(search, structure, method, goal)

    try:
        model, report = plan(search.budget_ratio)
    except VitDeployError as exc:
        raise Unreachable(name, str(exc)) from None
    return Candidate(name, kind, model, structure_ratio, plan, report, search=search)


def _token_plan(search: Search, structure, method: str, goal_ratio: float):
    """(model, report): ``structure`` with ``method``'s plan predicted at ``goal_ratio`` of the
    unpruned latency; ``VitDeployError`` if the method cannot go that low."""
    from vitdeploy.prune.registry import METHODS
    from vitdeploy.prune.token_methods import prune_tokens

    settings = {"target_latency_ms": goal_ratio * search.base_ms, "lut": search.table_file,
                "calib_size": search.config.calib_size, "seed": search.config.seed}
    config = METHODS.get(method).make_config(settings, known_only=True)
    return prune_tokens(structure, config, search.calib_images, progress=search.progress)


def measure_within_budget(search: Search, candidates: list[Candidate]) -> tuple[list[Candidate], list[dict]]:
    """(the candidates that measure within the budget, the dropped ones and why), after up to
    ``MEASURED_PLANS`` rounds of measuring and remaking the ones over it (module docstring)."""
    from vitdeploy.lut.measure import MEASURED_PLANS, TARGET_TOLERANCE

    limit = search.budget_ratio * (1 + TARGET_TOLERANCE)
    pending, dropped = list(candidates), []
    for round_index in range(MEASURED_PLANS):
        measure(search, pending)
        over = [c for c in pending if c.measured_ratio > limit]
        pending = _remade(search, over, dropped) if round_index < MEASURED_PLANS - 1 else []
        if not pending:
            break
    unmakeable, kept = {d["name"] for d in dropped}, []
    for candidate in candidates:
        if candidate.name in unmakeable:
            continue
        if candidate.measured_ratio > limit:
            dropped.append({"name": candidate.name, "reason": f"measured {candidate.measured_ratio:.3f}× for a "
                            f"{search.budget_ratio:.3f}× budget after {len(candidate.measurements)} tries"})
        else:
            kept.append(candidate)
    return kept, dropped


def _remade(search: Search, over: list[Candidate], dropped: list[dict]) -> list[Candidate]:
    """``over`` made again for goals corrected by their measurements; the ones that cannot be go
    to ``dropped``."""
    from vitdeploy.lut.measure import corrected_goal

    remade = []
    for candidate in over:
        goal = corrected_goal(search.budget_ratio, [(m.predicted_ratio, m.measured_ratio)
                                                    for m in candidate.measurements])
        try:
            if goal is None:
                raise VitDeployError("its measurements give no way down (nothing saved, or more pruning measured "
                                     "no faster)")
            candidate.model, candidate.token_report = candidate.remake(goal)
            candidate.structure_ratio = search.structure_ratio(candidate.model)
            remade.append(candidate)
        except VitDeployError as exc:
            dropped.append({"name": candidate.name, "reason": f"measured {candidate.measured_ratio:.3f}× for a "
                            f"{search.budget_ratio:.3f}× budget, and {exc}"})
    return remade


def measure(search: Search, candidates: list[Candidate]) -> None:
    """Time ``candidates`` interleaved with the unpruned model (one run) and record their ratios."""
    from vitdeploy.lut import measure as lut_measure

    if not candidates:
        return
    models = {"unpruned": search.base, **{f"candidate-{i}": c.model for i, c in enumerate(candidates)}}
    times = lut_measure.measure_models(models, search.table.metadata, progress=search.progress)
    for i, candidate in enumerate(candidates):
        ratio = times[f"candidate-{i}"] / times["unpruned"]
        candidate.measurements.append(Measurement(search.predicted_ratio(candidate.model), ratio))


def savings_scale(candidates: list[Candidate]) -> float:
    """Measured savings over predicted savings, least squares over every measurement taken: how
    far this run corrects the table (1: as predicted; below 1: the models were slower)."""
    pairs = [(1 - m.predicted_ratio, 1 - m.measured_ratio) for c in candidates for m in c.measurements]
    denominator = sum(p * p for p, _ in pairs)
    return sum(p * m for p, m in pairs) / denominator if denominator > 0 else math.nan

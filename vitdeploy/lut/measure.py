"""Whole models measured the way a latency table was: its backend, build settings and batch.

Predictions are only worth what a measurement confirms, so the tools that act on a table
(latency targets, the optimiser, table calibration) measure their results through here, with the
shared harness, and correct the table for drift: the machine is not the same on the day a table
is used as on the day it was built (the shipped CPU table's error was 8.2 % on one day and 11.2 %
on another). ``drift_corrected`` times the unpruned model and rescales the table's predictions so
that it predicts today's measurement.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from vitdeploy import runtime
from vitdeploy.backends import BuildConfig, ModelSource, get_backend
from vitdeploy.bench.harness import TimingPlan, random_batch, time_interleaved
from vitdeploy.lut.table import (
    LatencyTable, TableMetadata, load_table, predict, require_coverage, require_table_for,
)
from vitdeploy.models.vit import ViT
from vitdeploy.quantize.config import INT8

MEASURE_PLAN = TimingPlan(warmup=5, iters=60, rounds=6)
"""Whole-model timing: medians of 60 interleaved runs per model."""
TARGET_TOLERANCE = 0.01
"""A measurement at most this share over its target meets it (timing noise)."""
MEASURED_PLANS = 3
"""Plans made for one latency target: the first, then remade while they measure over it."""


def build_config_of(metadata: TableMetadata) -> BuildConfig:
    """The build settings the table was measured with, at its batch."""
    config = {**metadata.build_config, "batch_sizes": (metadata.batch,)}
    return BuildConfig(**config).validate()


def measure_models(models: dict[str, ViT], metadata: TableMetadata, plan: TimingPlan | None = None,
                   config: BuildConfig | None = None, progress: bool = False) -> dict[str, float]:
    """Median latency (ms) of each model, built like the table's parts (or with ``config``, at the
    table's batch) and timed interleaved; in a torchrun job by the main process alone, the others
    waiting for its figures."""
    return runtime.current().from_main(lambda: _measure(models, metadata, plan, config, progress))


def _measure(models: dict[str, ViT], metadata: TableMetadata, plan: TimingPlan | None, config: BuildConfig | None,
             progress: bool) -> dict[str, float]:
    backend = get_backend(metadata.backend)
    config = build_config_of(metadata) if config is None else replace(config, batch_sizes=(metadata.batch,))
    with tempfile.TemporaryDirectory(prefix="vitdeploy-measure-") as work:
        sources = {name: ModelSource(name, Path(work) / name, model=model.eval()) for name, model in models.items()}
        if metadata.precision == INT8:
            from vitdeploy.quantize.ptq import Int8Source  # ONNX Runtime's quantizer: only for INT8 tables

            sources = {name: Int8Source(source, metadata.batch) for name, source in sources.items()}
        engines = {name: backend.build(source, config.validate())
                   for name, source in tqdm(sources.items(), desc="whole models", disable=not progress)}
        shape = next(iter(models.values())).spec
        batch = random_batch(metadata.batch, (shape.in_chans, shape.img_size, shape.img_size))
        measurements = time_interleaved(engines, batch, plan or MEASURE_PLAN)
    return {name: m.median_ms for name, m in measurements.items()}


@dataclass(frozen=True)
class Drift:
    """Today's measurement of the unpruned model against the table's prediction of it."""

    predicted_ms: float
    measured_ms: float

    @property
    def factor(self) -> float:
        return self.measured_ms / self.predicted_ms

    def to_dict(self) -> dict:
        return {"predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms, "factor": self.factor}


def drift_corrected(table: LatencyTable, model: ViT, plan: TimingPlan | None = None) -> tuple[LatencyTable, Drift]:
    """The table rescaled so that it predicts today's latency of ``model``, and the drift found."""
    drift = Drift(predict(table, model.spec)["total_ms"], measure_models({"unpruned": model}, table.metadata,
                                                                          plan)["unpruned"])
    return table.rescaled(drift.factor), drift


def table_for_model(path: str, model: ViT, backend: str | None = None, batch: int | None = None,
                    plan: TimingPlan | None = None, int8: bool = False) -> tuple[LatencyTable, Drift]:
    """Load the table at ``path`` for acting on ``model`` (``checked_table``), drift-corrected on this machine."""
    return drift_corrected(checked_table(path, model, backend, batch, int8), model, plan)


def checked_table(path: str, model: ViT, backend: str | None = None, batch: int | None = None,
                  int8: bool = False) -> LatencyTable:
    """The table at ``path``, which must be for ``backend`` and ``batch`` (default: its own), for this
    machine's device, measured on INT8 graphs if and only if ``int8`` (the budget is for the model
    once quantized), and cover ``model``'s shapes without extrapolating."""
    table = load_table(path)
    meta = table.metadata
    require_table_for(table, backend or meta.backend, batch or meta.batch, meta.build_config["device"],
                      model.spec.name, int8)
    require_coverage(table, model.spec, model.spec.name)
    return table


def latency_check(table: LatencyTable, drift: Drift, unpruned: ViT, model: ViT, target_ms: float,
                  plan: TimingPlan | None = None) -> dict:
    """Time ``model`` interleaved with ``unpruned`` and check it against the prediction and target.

    Both checks are ratios to the unpruned model within that one run, so a machine that is faster
    or slower now than when the target was set (``drift``) does not count as an error: the
    prediction is the table's, rescaled so that it predicts this run's unpruned latency, and the
    target is compared as a share of the unpruned latency when it was set.
    """
    measured = measure_models({"unpruned": unpruned, "result": model}, table.metadata, plan)
    ratio = measured["result"] / measured["unpruned"]
    predicted_ratio = predict(table, model.spec)["total_ms"] / predict(table, unpruned.spec)["total_ms"]
    target_ratio = target_ms / drift.measured_ms
    return {"target_ms": target_ms, "measured_ms": measured["result"], "predicted_ms": predicted_ratio * measured["unpruned"],
            "unpruned_measured_ms": measured["unpruned"], "speedup": 1 / ratio,
            "measured_ratio": ratio, "predicted_ratio": predicted_ratio, "target_ratio": target_ratio,
            "prediction_error_pct": 100 * abs(ratio - predicted_ratio) / ratio,
            "target_error_pct": 100 * (ratio / target_ratio - 1)}


def corrected_goal(target_ratio: float, measurements: Sequence[tuple[float, float]]) -> float | None:
    """The predicted ratio to aim for so that the next plan measures ``target_ratio``, from the
    (predicted, measured) ratios of the plans made so far (all shares of the unpruned latency).

    After one plan the goal is scaled by the miss (target × predicted / measured). That is exact
    when the table is off by a factor, and lands between the last plan and the target when it
    misprices by a fixed cost instead, so it does not over-prune. From two plans on, the line
    through the last two points is solved for the target (a secant step), exact under either
    error. None when the measurements give no way down: nothing saved, or more pruning measured
    no faster."""
    predicted, measured = measurements[-1]
    if measured >= 1 or measured <= 0:
        return None
    if len(measurements) > 1:
        earlier_predicted, earlier_measured = measurements[-2]
        if predicted != earlier_predicted:
            slope = (measured - earlier_measured) / (predicted - earlier_predicted)
            if slope <= 0:
                return None
            return predicted + (target_ratio - measured) / slope
    return target_ratio * predicted / measured

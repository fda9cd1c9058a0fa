"""The one timing method every measurement goes through.

Warm up, then time many single runs and report median, p90 and p99 latency, with
throughput = batch / median. On CPU each run is timed with ``perf_counter``; on CUDA with CUDA
events recorded around the run on the current stream after a synchronize. Several engines are
compared *interleaved*: rounds of a few runs each, in rotating order, so that a noisy neighbour or
thermal drift hits every variant alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from vitdeploy.backends import Engine
from vitdeploy.errors import VitDeployError
from vitdeploy.schema import schema


MAX_RUNS, MAX_ROUNDS, MAX_SECONDS = 1_000_000, 10_000, 3600


@schema
@dataclass
class TimingPlan:
    warmup: int = 10
    iters: int = 50
    min_seconds: float = 0.0
    """Keep timing past ``iters`` until this much time is spent (steadier on noisy machines)."""
    rounds: int = 5
    """Interleaved comparisons: how many rotations; each engine gets ⌈iters/rounds⌉ runs per round.
    ``min_seconds`` does not apply to interleaved runs."""

    def validate(self) -> "TimingPlan":
        if not (0 <= self.warmup <= MAX_RUNS and 1 <= self.iters <= MAX_RUNS and 1 <= self.rounds <= MAX_ROUNDS
                and 0 <= self.min_seconds <= MAX_SECONDS):
            raise VitDeployError(f"timing needs warmup in 0..{MAX_RUNS}, iters in 1..{MAX_RUNS}, rounds in "
                                 f"1..{MAX_ROUNDS} and min_seconds in 0..{MAX_SECONDS}")
        return self


@dataclass
class Measurement:
    name: str
    batch: int
    latencies_ms: list[float] = field(repr=False)
    metadata: dict = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.latencies_ms))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 90))

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99))

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch / (self.median_ms / 1e3)

    def to_dict(self, with_samples: bool = False) -> dict:
        summary = {"name": self.name, "batch": self.batch, "iters": len(self.latencies_ms),
                   "median_ms": self.median_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
                   "mean_ms": float(np.mean(self.latencies_ms)), "throughput": self.throughput,
                   "metadata": self.metadata}
        if with_samples:
            summary["latencies_ms"] = self.latencies_ms
        return summary


def random_batch(batch: int, input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)


def run_timer(engine: Engine) -> Callable[[object], float]:
    """A function that runs one staged batch and returns its latency in milliseconds."""
    if getattr(engine, "device", "cpu") == "cuda":
        return _cuda_timer(engine)

    def timed(staged) -> float:
        start = time.perf_counter()
        engine.run(staged)
        engine.synchronize()
        return (time.perf_counter() - start) * 1e3

    return timed


def _cuda_timer(engine: Engine) -> Callable[[object], float]:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(staged) -> float:
        engine.synchronize()
        start.record()
        engine.run(staged)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return timed


def time_engine(engine: Engine, name: str, batch: np.ndarray, plan: TimingPlan | None = None) -> Measurement:
    """Warm up, then time single runs of ``batch`` (see ``TimingPlan``)."""
    plan = (plan or TimingPlan()).validate()
    staged, timed = engine.stage(batch), run_timer(engine)
    for _ in range(plan.warmup):
        timed(staged)
    latencies, started = [], time.perf_counter()
    while len(latencies) < plan.iters or time.perf_counter() - started < plan.min_seconds:
        latencies.append(timed(staged))
    return Measurement(name, len(batch), latencies, engine.metadata())


def time_interleaved(engines: dict[str, Engine], batch: np.ndarray | dict[str, np.ndarray],
                     plan: TimingPlan | None = None,
                     on_round: Callable[[int], None] | None = None) -> dict[str, Measurement]:
    """Time several engines in rotating rounds, on the same batch or on one batch each (a dict by
    engine name); one Measurement each."""
    plan = (plan or TimingPlan()).validate()
    batches = batch if isinstance(batch, dict) else {name: batch for name in engines}
    staged = {name: engine.stage(batches[name]) for name, engine in engines.items()}
    timers = {name: run_timer(engine) for name, engine in engines.items()}
    for name in engines:
        for _ in range(plan.warmup):
            timers[name](staged[name])
    per_round = -(-plan.iters // plan.rounds)
    latencies: dict[str, list[float]] = {name: [] for name in engines}
    order = list(engines)
    for round_index in range(plan.rounds):
        for name in _rotated(order, round_index):
            latencies[name].extend(timers[name](staged[name]) for _ in range(per_round))
        if on_round:
            on_round(round_index)
    return {name: Measurement(name, len(batches[name]), latencies[name], engines[name].metadata()) for name in engines}


def _rotated(items: list, shift: int) -> Iterable:
    shift %= len(items)
    return items[shift:] + items[:shift]

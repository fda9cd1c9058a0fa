"""What pruning targets are measured in: FLOPs, or latency predicted by a measured table.

A ``CostTarget`` says what a method's knob or pruning loop must reach (``cost(spec) <= goal``)
and which option set it, so that every method reports an unreachable target the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vitdeploy.lut.table import LatencyTable, StemGeometry, load_table, predict, require_coverage
from vitdeploy.models.flops import total_macs
from vitdeploy.models.spec import ViTSpec

CostFn = Callable[[ViTSpec], float]


def flops_cost(spec: ViTSpec) -> float:
    """The model's MACs (``vitdeploy.models.flops``): the latency stand-in without a table."""
    return float(total_macs(spec))


def lut_latency(table: LatencyTable) -> CostFn:
    """Predicted latency (ms) from a latency table.

    The whole model when the table's fixed part was measured for the model's input geometry;
    otherwise the blocks only (``include_fixed=False``), which is what latency differences need.
    """
    def latency(spec: ViTSpec) -> float:
        return predict(table, spec, include_fixed=StemGeometry.of(spec) == table.stem)["total_ms"]

    return latency


@dataclass(frozen=True)
class CostTarget:
    """``cost(spec) <= goal``; ``flag`` and ``unit`` name it in messages."""

    cost: CostFn
    goal: float
    flag: str
    unit: str

    def describe(self, value: float) -> str:
        return f"{value:.3g}{self.unit}"


def flops_target(ratio: float, base: ViTSpec, flag: str = "--target-flops") -> CostTarget:
    """MACs at most ``ratio`` × those of ``base``, as a ratio."""
    base_macs = total_macs(base)
    return CostTarget(lambda spec: total_macs(spec) / base_macs, ratio, flag, "× FLOPs")


def latency_target(ms: float, table: LatencyTable | str, base: ViTSpec, flag: str = "--target-latency-ms") -> CostTarget:
    """Predicted latency at most ``ms`` under ``table`` (a table or its path), which must cover ``base``."""
    table = load_table(table) if isinstance(table, str) else table
    require_coverage(table, base, base.name)
    return CostTarget(lut_latency(table), ms, flag, " ms predicted")

"""ToMe's settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import check_fields, schema

SCHEDULES = ("constant", "decreasing")


@schema
@dataclass
class ToMeConfig:
    method: str = "tome"
    r: Annotated[int, Field(ge=0)] | None = None
    """Patch tokens merged in each block but the last, shaped by ``schedule``."""
    schedule: str = "constant"
    """``constant``: r in every block; ``decreasing``: 2r in the first block down to 2r/(L−1) in
    the last one that merges (about as many merges in all, earlier)."""
    r_per_block: tuple[Annotated[int, Field(ge=0)], ...] | None = None
    """An explicit schedule: tokens merged in blocks 1, 2, … (at most depth − 1 values)."""
    target_flops: Annotated[float, Field(gt=0, lt=1)] | None = None
    target_latency_ms: Annotated[float, Field(gt=0)] | None = None
    lut: str | None = None

    def validate(self) -> "ToMeConfig":
        check_fields(self)
        if self.schedule not in SCHEDULES:
            raise VitDeployError(f"unknown ToMe schedule {self.schedule!r}: choose {' or '.join(SCHEDULES)}")
        given = [k for k in ("r", "r_per_block", "target_flops", "target_latency_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise VitDeployError("tome needs exactly one of --r, --r-per-block, --target-flops or --target-latency-ms")
        if (self.target_latency_ms is None) != (self.lut is None):
            raise VitDeployError("--target-latency-ms and --lut go together: the table predicts the latency")
        return self

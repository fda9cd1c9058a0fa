"""ToMe's settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.prune.token_config import TokenTargets
from vitdeploy.schema import schema

SCHEDULES = ("constant", "decreasing")


@schema
@dataclass
class ToMeConfig(TokenTargets):
    method: str = "tome"
    r: Annotated[int, Field(ge=0)] | None = None
    """Patch tokens merged in each block but the last, shaped by ``schedule``."""
    schedule: str = "constant"
    """``constant``: r in every block; ``decreasing``: 2r in the first block down to 2r/(L−1) in
    the last one that merges (about as many merges in all, earlier)."""
    r_per_block: tuple[Annotated[int, Field(ge=0)], ...] | None = None
    """An explicit schedule: tokens merged in blocks 1, 2, … (at most depth − 1 values)."""

    KNOBS = ("r", "r_per_block")

    def validate(self) -> "ToMeConfig":
        super().validate()
        if self.schedule not in SCHEDULES:
            raise VitDeployError(f"unknown ToMe schedule {self.schedule!r}: choose {' or '.join(SCHEDULES)}")
        return self

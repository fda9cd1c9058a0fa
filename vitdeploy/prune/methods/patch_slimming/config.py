"""Patch Slimming's settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.prune.token_config import Count, TokenTargets
from vitdeploy.schema import schema


@schema
@dataclass
class PatchSlimmingConfig(TokenTargets):
    method: str = "patch-slimming"
    epsilon: Annotated[float, Field(gt=0)] | None = None
    """Tolerated relative error of the class token's final features."""
    granularity: Count = 1
    """Patches added per greedy step, r'."""
    calib_size: Count = 256
    seed: int = 0

    KNOBS = ("epsilon",)

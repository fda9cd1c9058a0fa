"""STAR's settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.prune.token_config import Count, TokenTargets
from vitdeploy.schema import schema


@schema
@dataclass
class StarConfig(TokenTargets):
    method: str = "star"
    """``star``, or ``a-star`` for input-dependent counts."""
    rho: Annotated[float, Field(gt=0, le=1)] | None = None
    """The keep rate of the last block (ρ in their Eq. 5)."""
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.15
    """Fusion weight of the online class attention."""
    gamma: Count = 6
    """Top classes per image in the inter-layer scores."""
    rounds: Count = 10
    """Calibration rounds T."""
    calib_size: Count = 256
    calib_batch: Count = 32
    seed: int = 0

    KNOBS = ("rho",)

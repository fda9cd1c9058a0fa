"""The baselines' settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.prune.token_config import TokenTargets
from vitdeploy.schema import named, schema


@schema
@dataclass
class BaselineConfig(TokenTargets):
    method: str = "uniform"
    """``uniform``, ``cls-attn`` or ``random``."""
    rate: Annotated[float, Field(gt=0, lt=1)] | None = None
    """The share of patch tokens kept at each step."""
    keep: str | None = None
    """An explicit plan, BLOCK:KEEP pairs as for ``vitdeploy export --keep``."""
    blocks: str | None = None
    """cls-attn: the blocks (1-based, comma-separated) that drop tokens."""
    package: bool = False
    """cls-attn: fold the dropped tokens into a package token."""
    seed: int = 0
    """random: the seed of the kept positions."""

    KNOBS = ("rate", "keep")

    def validate(self) -> "BaselineConfig":
        super().validate()
        if self.package and self.method != "cls-attn":
            raise VitDeployError(f"{named('package')} applies to cls-attn only")
        if self.blocks is not None and self.method != "cls-attn":
            raise VitDeployError(f"{named('blocks')} applies to cls-attn only")
        return self

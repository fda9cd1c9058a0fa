"""Settings of the static token methods (a light module: the CLI reads its defaults without
importing torch). Each method in ``vitdeploy.prune.methods`` says which fields it offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import check_fields, schema

Count = Annotated[int, Field(ge=1)]

TOKEN_OPTION_HELP = {
    "target_flops": "target FLOPs as a ratio of the unpruned model's, in (0, 1): the method's knob is bisected",
    "target_latency_ms": "target latency in ms predicted by --lut, instead of --target-flops: the knob is bisected",
    "lut": "latency table for --target-latency-ms (see `vitdeploy lut build --for`)",
    "calib_size": "calibration images drawn (seeded) from the train split",
    "seed": "calibration sampling and random plans",
}
"""Help of the options every token method shares."""


@schema
@dataclass
class TokenPruneConfig:
    method: str
    target_flops: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Target MACs as a ratio of the unpruned model's, in (0, 1); bisects the method's knob."""
    target_latency_ms: Annotated[float, Field(gt=0)] | None = None
    """Target latency (ms) predicted by the latency table ``lut``; bisects the method's knob."""
    lut: str | None = None
    rho: Annotated[float, Field(gt=0, le=1)] | None = None
    """STAR / a-STAR: the keep rate of the last block (ρ in their Eq. 5)."""
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.15
    gamma: Count = 6
    rounds: Count = 10
    epsilon: Annotated[float, Field(gt=0)] | None = None
    """Patch Slimming: tolerated relative error of the class token's final features."""
    granularity: Count = 1
    rate: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Baselines: the share of patch tokens kept at each step."""
    keep: str | None = None
    """Baselines: an explicit plan, BLOCK:KEEP pairs as for ``vitdeploy export --keep``."""
    blocks: str | None = None
    """cls-attn: the blocks (1-based, comma-separated) that drop tokens."""
    package: bool = False
    calib_size: Count = 256
    calib_batch: Count = 32
    seed: int = 0

    def validate(self) -> "TokenPruneConfig":
        from vitdeploy.prune.registry import METHODS

        check_fields(self)
        token_methods = {name: m for name, m in METHODS.items().items() if m.plan is not None}
        if self.method not in token_methods:
            raise VitDeployError(f"unknown token method {self.method!r}: choose one of {', '.join(token_methods)}")
        knobs = token_methods[self.method].knobs
        choices = ("target_flops", "target_latency_ms", *knobs)
        given = [k for k in choices if getattr(self, k) is not None]
        if len(given) != 1:
            names = " or ".join(f"--{k.replace('_', '-')}" for k in choices)
            raise VitDeployError(f"{self.method} needs exactly one of {names}")
        if (self.target_latency_ms is None) != (self.lut is None):
            raise VitDeployError("--target-latency-ms and --lut go together: the table predicts the latency")
        if self.package and self.method != "cls-attn":
            raise VitDeployError("--package applies to cls-attn only")
        if self.blocks is not None and self.method != "cls-attn":
            raise VitDeployError("--blocks applies to cls-attn only")
        return self

"""Settings of the static token methods (a light module: the CLI reads its defaults without
importing torch). Each method in ``vitdeploy.prune.methods`` says which fields it offers."""

from __future__ import annotations

from dataclasses import dataclass

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import schema

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
    target_flops: float | None = None
    """Target MACs as a ratio of the unpruned model's, in (0, 1); bisects the method's knob."""
    target_latency_ms: float | None = None
    """Target latency (ms) predicted by the latency table ``lut``; bisects the method's knob."""
    lut: str | None = None
    rho: float | None = None
    """STAR / a-STAR: the keep rate of the last block (ρ in their Eq. 5)."""
    alpha: float = 0.15
    gamma: int = 6
    rounds: int = 10
    epsilon: float | None = None
    """Patch Slimming: tolerated relative error of the class token's final features."""
    granularity: int = 1
    rate: float | None = None
    """Baselines: the share of patch tokens kept at each step."""
    keep: str | None = None
    """Baselines: an explicit plan, BLOCK:KEEP pairs as for ``vitdeploy export --keep``."""
    blocks: str | None = None
    """cls-attn: the blocks (1-based, comma-separated) that drop tokens."""
    package: bool = False
    calib_size: int = 256
    calib_batch: int = 32
    seed: int = 0

    def validate(self) -> "TokenPruneConfig":
        from vitdeploy.prune.registry import METHODS

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
        if self.target_latency_ms is not None and not self.target_latency_ms > 0:
            raise VitDeployError(f"--target-latency-ms must be positive, got {self.target_latency_ms}")
        if self.target_flops is not None and not 0 < self.target_flops < 1:
            raise VitDeployError(f"--target-flops is a ratio of the unpruned model's FLOPs in (0, 1), "
                                 f"got {self.target_flops}")
        if self.rho is not None and not 0 < self.rho <= 1:
            raise VitDeployError(f"--rho must be in (0, 1], got {self.rho}")
        if self.rate is not None and not 0 < self.rate < 1:
            raise VitDeployError(f"--rate must be strictly between 0 and 1, got {self.rate}")
        if self.epsilon is not None and not self.epsilon > 0:
            raise VitDeployError(f"--epsilon must be positive, got {self.epsilon}")
        if not 0 <= self.alpha <= 1:
            raise VitDeployError(f"--alpha must be in [0, 1], got {self.alpha}")
        if min(self.gamma, self.rounds, self.calib_size, self.calib_batch, self.granularity) < 1:
            raise VitDeployError("--gamma, --rounds, --calib-size, --calib-batch and --granularity must be ≥ 1")
        if self.package and self.method != "cls-attn":
            raise VitDeployError("--package applies to cls-attn only")
        if self.blocks is not None and self.method != "cls-attn":
            raise VitDeployError("--blocks applies to cls-attn only")
        return self

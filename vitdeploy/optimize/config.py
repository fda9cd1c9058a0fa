"""The optimiser's settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import schema

SEARCHES = ("joint", "nvit", "tokens")
DEFAULT_BACKEND, DEFAULT_BATCH = "onnxruntime", 64
"""What a run without a table is for."""
NVIT_STEP_FINETUNE = 40
"""``vitdeploy prune nvit``'s fine-tuning steps after each pruning step (``NViTConfig``'s default)."""


@schema
@dataclass
class OptimizeConfig:
    lut: str | None = None
    """Latency table measured for this model (``vitdeploy lut build --for MODEL``). Default: this
    machine's CPU table for the model at ``batch`` in ``latency_tables/``, built first if missing."""
    budget_ms: float | None = None
    """Latency budget (ms) at the table's batch, on the table's backend and device."""
    budget_ratio: float | None = None
    """The budget as a share of the unpruned model's latency measured at the start, instead of ``budget_ms``."""
    batch: int | None = None
    """The batch the budget is for; must be the table's (default: the table's, or 64 without ``lut``)."""
    backend: str | None = None
    """The backend the budget is for; must be the table's (default: the table's, or onnxruntime)."""
    data: str = "fashion-mnist"
    """Training split: importance, calibration, fine-tuning and the held-out proxy sample; test split: top-1."""
    resize: bool = False
    """Resize the data's images to the model's input size."""
    search: str = "joint"
    tokens: str = "star"
    """The token method whose knob is solved for the budget on each NViT snapshot."""
    alone: str = "star,patch-slimming"
    """Token methods also tried alone on the unpruned structure (comma-separated; empty for none)."""
    width_step: float = 0.1
    """Structural candidates every this share of the unpruned predicted latency."""
    prune_step: float = 0.05
    """NViT: predicted latency removed per pruning step, as a share of the unpruned model's."""
    step_finetune_steps: int = NVIT_STEP_FINETUNE
    """NViT: distilled fine-tuning steps after each pruning step (``prune nvit``'s schedule)."""
    rung_steps: int = 25
    """Successive halving: fine-tuning steps every candidate gets in the first round; each later
    round doubles them for the better half."""
    finetune_steps: int = 300
    """Distilled fine-tuning steps of the chosen candidate, token plan active, from its weights before
    the race; no candidate is fine-tuned longer in the race."""
    proxy_images: int = 2000
    """Training images held out of every fine-tune to rank the candidates on."""
    check_ranking: bool = False
    """Also fine-tune every candidate fully and report its test top-1 and the proxy's rank correlation."""
    calib_size: int = 256
    """Calibration images of the token method."""
    round_to: int = 8
    lr: float = 5e-4
    batch_size: int = 128
    eval_limit: int | None = None
    """Evaluate on the first N test images only."""
    seed: int = 0
    threads: int = 2

    def validate(self) -> "OptimizeConfig":
        if (self.budget_ms is None) == (self.budget_ratio is None):
            raise VitDeployError("give exactly one budget: --budget-ms MS or --budget-ratio R")
        if self.budget_ms is not None and not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise VitDeployError(f"--budget-ms must be a positive number of milliseconds, got {self.budget_ms}")
        if self.budget_ratio is not None and not 0 < self.budget_ratio < 1:
            raise VitDeployError(f"--budget-ratio must be between 0 and 1 (a share of the unpruned latency), "
                                 f"got {self.budget_ratio}")
        if self.search not in SEARCHES:
            raise VitDeployError(f"unknown --search {self.search!r}: choose one of {', '.join(SEARCHES)}")
        for method in (self.tokens, *self.alone_methods):
            self._require_token_method(method)
        if not 0 < self.width_step < 1 or not 0 < self.prune_step < 1:
            raise VitDeployError("--width-step and --prune-step must be fractions between 0 and 1")
        if min(self.proxy_images, self.calib_size, self.round_to, self.batch_size, self.threads, self.rung_steps) < 1:
            raise VitDeployError("--proxy-images, --calib-size, --round-to, --batch-size, --rung-steps and --threads "
                                 "must be ≥ 1")
        if min(self.step_finetune_steps, self.finetune_steps) < 0:
            raise VitDeployError("fine-tuning step counts cannot be negative")
        if not self.lr > 0:
            raise VitDeployError("--lr must be positive")
        return self

    @property
    def alone_methods(self) -> tuple[str, ...]:
        """The token methods tried alone: ``tokens`` first when the search is ``tokens``."""
        named = [m.strip() for m in self.alone.split(",") if m.strip()]
        if self.search == "tokens":
            named.insert(0, self.tokens)
        return tuple(dict.fromkeys(named)) if self.search != "nvit" else ()

    @staticmethod
    def _require_token_method(method: str) -> None:
        from vitdeploy.prune.registry import METHODS

        choices = sorted(name for name, m in METHODS.items().items() if m.plan is not None and m.static)
        if method not in choices:
            raise VitDeployError(f"unknown token method {method!r} (--tokens, --alone): "
                                 f"choose from {', '.join(choices)}")

"""The optimiser's settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.quantize.config import INT8
from vitdeploy.schema import check_fields, named, schema

Share = Annotated[float, Field(gt=0, lt=1)]
Count = Annotated[int, Field(ge=1)]
Steps = Annotated[int, Field(ge=0)]

SEARCHES = ("joint", "nvit", "tokens")
FLOAT = "fp32"
PRECISIONS = (FLOAT, INT8)
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
    budget_ms: Annotated[float, Field(gt=0)] | None = None
    """Latency budget (ms) at the table's batch, on the table's backend and device."""
    budget_ratio: Share | None = None
    """The budget as a share of the unpruned model's latency measured at the start, instead of ``budget_ms``."""
    batch: Count | None = None
    """The batch the budget is for; must be the table's (default: the table's, or 64 without ``lut``)."""
    backend: str | None = None
    """The backend the budget is for; must be the table's (default: the table's, or onnxruntime)."""
    precisions: str = FLOAT
    """Comma-separated precisions to search: ``fp32``, or ``fp32,int8`` to add INT8 candidates (each
    candidate quantized as ``vitdeploy quantize`` does by default), each precision with its own table."""
    int8_lut: str | None = None
    """The INT8 latency table (``vitdeploy lut build --for MODEL --precision int8``). Default: this
    machine's INT8 table for the model at ``batch``, built first if missing."""
    max_drop: Annotated[float, Field(ge=0, le=100)] = 1.0
    """An INT8 pick may lose at most this many test top-1 points against its float self (else the next
    candidate in the ranking is finished instead)."""
    data: str = "fashion-mnist"
    """Training split: importance, calibration, fine-tuning and the held-out proxy sample; test split: top-1."""
    resize: bool = False
    """Resize the data's images to the model's input size."""
    search: str = "joint"
    tokens: str = "star"
    """The token method whose knob is solved for the budget on each NViT snapshot."""
    alone: str = "star,patch-slimming"
    """Token methods also tried alone on the unpruned structure (comma-separated; empty for none)."""
    width_step: Share = 0.1
    """Structural candidates every this share of the unpruned predicted latency."""
    prune_step: Share = 0.05
    """NViT: predicted latency removed per pruning step, as a share of the unpruned model's."""
    step_finetune_steps: Steps = NVIT_STEP_FINETUNE
    """NViT: distilled fine-tuning steps after each pruning step (``prune nvit``'s schedule)."""
    rung_steps: Count = 25
    """Successive halving: fine-tuning steps every candidate gets in the first round; each later
    round doubles them for the better half."""
    finetune_steps: Steps = 300
    """Distilled fine-tuning steps of the chosen candidate, token plan active, from its weights before
    the race; no candidate is fine-tuned longer in the race."""
    proxy_images: Count = 2000
    """Training images held out of every fine-tune to rank the candidates on."""
    check_ranking: bool = False
    """Also fine-tune every candidate fully and report its test top-1 and the proxy's rank correlation."""
    calib_size: Count = 256
    """Calibration images of the token method."""
    round_to: Count = 8
    lr: Annotated[float, Field(gt=0)] = 5e-4
    batch_size: Count = 128
    eval_limit: Count | None = None
    """Evaluate on the first N test images only."""
    seed: int = 0
    threads: Count = 2

    def validate(self) -> "OptimizeConfig":
        check_fields(self)
        if (self.budget_ms is None) == (self.budget_ratio is None):
            raise VitDeployError(f"give exactly one budget: {named('budget_ms')} MS or {named('budget_ratio')} R")
        if self.search not in SEARCHES:
            raise VitDeployError(f"unknown {named('search')} {self.search!r}: choose one of {', '.join(SEARCHES)}")
        for method in (self.tokens, *self.alone_methods):
            self._require_token_method(method)
        unknown = sorted(set(self.precision_list) - set(PRECISIONS))
        if unknown or FLOAT not in self.precision_list:
            raise VitDeployError(f"{named('precisions')} {self.precisions!r}: give {FLOAT} or {FLOAT},{INT8} (the "
                                 "float search is the reference the budget ratio and INT8's gain are measured against)")
        if self.int8_lut is not None and INT8 not in self.precision_list:
            raise VitDeployError(f"{named('int8_lut')} applies only with {named('precisions')} {FLOAT},{INT8}")
        return self

    @property
    def precision_list(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.strip() for p in self.precisions.split(",") if p.strip()))

    @property
    def alone_methods(self) -> tuple[str, ...]:
        """The token methods tried alone: ``tokens`` first when the search is ``tokens``."""
        methods = [m.strip() for m in self.alone.split(",") if m.strip()]
        if self.search == "tokens":
            methods.insert(0, self.tokens)
        return tuple(dict.fromkeys(methods)) if self.search != "nvit" else ()

    @staticmethod
    def _require_token_method(method: str) -> None:
        from vitdeploy.prune.registry import METHODS

        choices = sorted(name for name, m in METHODS.items().items() if m.plan is not None and m.static)
        if method not in choices:
            raise VitDeployError(f"unknown token method {method!r} (--tokens, --alone): "
                                 f"choose from {', '.join(choices)}")

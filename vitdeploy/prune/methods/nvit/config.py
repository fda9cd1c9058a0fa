"""NViT settings (a light module: the CLI reads its defaults without importing torch). See
``vitdeploy.prune.methods.nvit.structural`` for the method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.quantize.config import INT8
from vitdeploy.schema import check_fields, named, schema
from vitdeploy.train.config import DistilledFineTune

LATENCY_PRECISIONS = ("fp32", INT8)
"""What ``target_latency_ms`` is for: the float model, or the model once INT8-quantized."""
CRITERIA = ("hessian", "magnitude")
"""Global importance criteria: Hessian-aware (Σ ∂L/∂w·w)² per group, or the group's weight norm."""


@schema
@dataclass
class NViTConfig(DistilledFineTune):
    """NViT settings; the defaults suit the Fashion-MNIST reference model on a CPU."""

    target_flops: Annotated[float, Field(gt=0, lt=1)] | None = 0.5
    """Target MACs as a fraction of the original model's, in (0, 1). Set None to use a latency target."""
    target_latency_ms: Annotated[float, Field(gt=0)] | None = None
    """Target predicted latency (ms, from the latency table ``lut``), instead of ``target_flops``."""
    lut: str | None = None
    """Latency table (JSON) for the latency term and latency targets; without one, FLOPs stand in."""
    latency_precision: str = "fp32"
    """``int8``: ``target_latency_ms`` is for the pruned model once quantized (``vitdeploy quantize``),
    predicted and measured with an INT8 table (``vitdeploy lut build --precision int8``)."""
    criterion: str = "hessian"
    """``hessian`` ((Σ ∂L/∂w·w)² per group) or ``magnitude`` (‖W_S‖₂² per group)."""
    eta: Annotated[float, Field(ge=0)] = 0.1
    """Weight of the latency term: importance share minus eta × cost share of a removal."""
    prune_step: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """Each pruning step lowers the cost by this fraction of the original model's cost."""
    calib_batches: Annotated[int, Field(ge=1)] = 8
    """Calibration batches per importance estimate."""
    final_finetune_steps: Annotated[int, Field(ge=0)] = 300
    """Fine-tuning steps at the end (``finetune_steps`` run after every pruning step)."""
    round_to: Annotated[int, Field(ge=1)] = 8
    """Every pruned dim stays a multiple of this: 8, or 16 when 2:4 sparsity follows."""

    def validate(self) -> NViTConfig:
        """Raise ``VitDeployError`` for a bad value; return self for chaining."""
        check_fields(self)
        if (self.target_flops is None) == (self.target_latency_ms is None):
            raise VitDeployError(f"give exactly one target: {named('target_flops')} RATIO or "
                                 f"{named('target_latency_ms')} MS")
        if self.latency_precision not in LATENCY_PRECISIONS:
            raise VitDeployError(f"unknown latency precision {self.latency_precision!r}: choose "
                                 f"{' or '.join(LATENCY_PRECISIONS)}")
        if self.latency_precision == INT8 and self.target_latency_ms is None:
            raise VitDeployError(f"an INT8 latency precision needs a latency target ({named('target_latency_ms')} "
                                 f"with {named('lut')})")
        if self.criterion not in CRITERIA:
            raise VitDeployError(f"unknown criterion {self.criterion!r}: choose one of {', '.join(CRITERIA)}")
        return self

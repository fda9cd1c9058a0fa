"""NViT settings (a light module: the CLI reads its defaults without importing torch). See
``vitdeploy.prune.structural`` for the method."""

from __future__ import annotations

from dataclasses import dataclass

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import schema
from vitdeploy.train.config import TrainConfig

CRITERIA = ("hessian", "magnitude")
"""Global importance criteria: Hessian-aware (Σ ∂L/∂w·w)² per group, or the group's weight norm."""


@schema
@dataclass
class NViTConfig:
    """NViT settings; the defaults suit the Fashion-MNIST reference model on a CPU."""

    target_flops: float | None = 0.5
    """Target MACs as a fraction of the original model's, in (0, 1). Set None to use a latency target."""
    target_latency_ms: float | None = None
    """Target predicted latency (ms, from the latency table ``lut``), instead of ``target_flops``."""
    lut: str | None = None
    """Latency table (JSON) for the latency term and latency targets; without one, FLOPs stand in."""
    criterion: str = "hessian"
    """``hessian`` ((Σ ∂L/∂w·w)² per group) or ``magnitude`` (‖W_S‖₂² per group)."""
    eta: float = 0.1
    """Weight of the latency term: importance share minus eta × cost share of a removal."""
    temperature: float = 1.0
    """Distillation temperature τ of the KL term to the unpruned model's logits."""
    distill_weight: float = 1.0
    prune_step: float = 0.05
    """Each pruning step lowers the cost by this fraction of the original model's cost."""
    calib_batches: int = 8
    """Calibration batches per importance estimate."""
    batch_size: int = 128
    finetune_steps: int = 40
    """Fine-tuning steps after every pruning step."""
    final_finetune_steps: int = 300
    lr: float = 5e-4
    """Peak learning rate of every fine-tune (cosine decay to 1 % of it, no warm-up)."""
    round_to: int = 8
    """Every pruned dim stays a multiple of this: 8, or 16 when 2:4 sparsity follows."""
    seed: int = 0
    threads: int = 2

    def validate(self) -> NViTConfig:
        """Raise ``VitDeployError`` for a bad value; return self for chaining."""
        if (self.target_flops is None) == (self.target_latency_ms is None):
            raise VitDeployError("give exactly one target: --target-flops RATIO or --target-latency-ms MS")
        if self.target_flops is not None and not 0 < self.target_flops < 1:
            raise VitDeployError(f"--target-flops {self.target_flops} must be a ratio between 0 and 1 "
                                 "(e.g. 0.5 keeps half the FLOPs)")
        if self.target_latency_ms is not None and not self.target_latency_ms > 0:
            raise VitDeployError(f"--target-latency-ms {self.target_latency_ms} must be positive")
        if self.criterion not in CRITERIA:
            raise VitDeployError(f"unknown criterion {self.criterion!r}: choose one of {', '.join(CRITERIA)}")
        if self.eta < 0 or not self.temperature > 0 or self.distill_weight < 0:
            raise VitDeployError("--eta and --distill-weight must be at least 0 and --temperature positive")
        if not 0 < self.prune_step < 1:
            raise VitDeployError(f"--prune-step {self.prune_step} must be a fraction between 0 and 1")
        if min(self.calib_batches, self.batch_size, self.round_to, self.threads) < 1:
            raise VitDeployError("--calib-batches, --batch-size, --round-to and --threads must be at least 1")
        if min(self.finetune_steps, self.final_finetune_steps) < 0:
            raise VitDeployError("fine-tuning step counts cannot be negative")
        if not self.lr > 0:
            raise VitDeployError("--lr must be positive")
        return self

    def train_config(self, seed_offset: int = 0) -> TrainConfig:
        """The fine-tuning settings (distillation on) for one fine-tune of the run."""
        return TrainConfig(batch_size=self.batch_size, lr=self.lr, min_lr=self.lr / 100, warmup_epochs=0.0,
                           seed=self.seed + seed_offset, threads=self.threads,
                           distill_temperature=self.temperature, distill_weight=self.distill_weight)

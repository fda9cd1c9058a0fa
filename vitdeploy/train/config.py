"""Training settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import schema


@schema
@dataclass
class TrainConfig:
    model: str = "fmnist_vit"
    data: str = "fashion-mnist"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    crop_padding: int = 0
    """Random-shift augmentation in pixels (0 = off); horizontal flips are always on."""
    seed: int = 0
    threads: int = 2
    limit: int | None = None
    init: str | None = None
    """A model directory to start from (fine-tuning) instead of a seeded random init."""
    distill_temperature: float = 1.0
    """Temperature τ of the distillation term, used only when a teacher is given."""
    distill_weight: float = 1.0
    """Weight α of the distillation term: loss = CE + α·τ²·KL(teacher ‖ student) at temperature τ."""

    def validate(self) -> "TrainConfig":
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1:
            raise VitDeployError("--epochs, --batch-size and --threads must be at least 1")
        if not self.lr > 0:
            raise VitDeployError("--lr must be positive")
        if not self.distill_temperature > 0 or self.distill_weight < 0:
            raise VitDeployError("the distillation temperature must be positive and its weight at least 0")
        return self

    def command(self, out: str) -> str:
        """The exact ``vitdeploy train`` command that reproduces a run with this config."""
        return (f"vitdeploy train --model {self.model} --data {self.data} --out {out} --epochs {self.epochs} "
                f"--batch-size {self.batch_size} --lr {self.lr} --label-smoothing {self.label_smoothing} "
                f"--crop-padding {self.crop_padding} --seed {self.seed} --threads {self.threads}"
                + (f" --limit {self.limit}" if self.limit else "") + (f" --init {self.init}" if self.init else ""))

"""Training settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.schema import check_fields, schema

Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]



@schema
@dataclass
class TrainConfig:
    model: str = "fmnist_vit"
    data: str = "fashion-mnist"
    epochs: Count = 15
    batch_size: Count = 128
    lr: Positive = 2e-3
    min_lr: NonNegative = 1e-5
    weight_decay: NonNegative = 0.05
    warmup_epochs: NonNegative = 1.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    crop_padding: Annotated[int, Field(ge=0)] = 0
    """Random-shift augmentation in pixels (0 = off); horizontal flips are always on."""
    seed: int = 0
    threads: Count = 2
    limit: Count | None = None
    init: str | None = None
    """A model directory to start from (fine-tuning) instead of a seeded random init."""
    distill_temperature: Positive = 1.0
    """Temperature τ of the distillation term, used only when a teacher is given."""
    distill_weight: NonNegative = 1.0
    """Weight α of the distillation term: loss = CE + α·τ²·KL(teacher ‖ student) at temperature τ."""

    def validate(self) -> "TrainConfig":
        check_fields(self)
        return self

    def command(self, out: str) -> str:
        """The exact ``vitdeploy train`` command that reproduces a run with this config."""
        return (f"vitdeploy train --model {self.model} --data {self.data} --out {out} --epochs {self.epochs} "
                f"--batch-size {self.batch_size} --lr {self.lr} --label-smoothing {self.label_smoothing} "
                f"--crop-padding {self.crop_padding} --seed {self.seed} --threads {self.threads}"
                + (f" --limit {self.limit}" if self.limit else "") + (f" --init {self.init}" if self.init else ""))


@schema
@dataclass
class DistilledFineTune:
    """The settings of a pruning method's short fine-tunes, distilled from the unpruned model (a base
    for the method's own settings)."""

    batch_size: Count = 128
    finetune_steps: Annotated[int, Field(ge=0)] = 40
    lr: Positive = 5e-4
    """Peak learning rate of every fine-tune (cosine decay to 1 % of it, no warm-up)."""
    temperature: Positive = 1.0
    """Distillation temperature τ of the KL term to the unpruned model's logits."""
    distill_weight: NonNegative = 1.0
    seed: int = 0
    threads: Count = 2

    def train_config(self, seed_offset: int = 0) -> TrainConfig:
        """The settings of one fine-tune of the run."""
        return TrainConfig(batch_size=self.batch_size, lr=self.lr, min_lr=self.lr / 100, warmup_epochs=0.0,
                           seed=self.seed + seed_offset, threads=self.threads, distill_temperature=self.temperature,
                           distill_weight=self.distill_weight)

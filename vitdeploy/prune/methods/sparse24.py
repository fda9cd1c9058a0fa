"""2:4 semi-structured sparsity: magnitude masks on every block Linear (NVIDIA's ASP recipe),
optionally fine-tuned with the zeros kept. Dims must be multiples of 16: prune with
``nvit --round-to 16`` first."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import schema
from vitdeploy.prune.nvit_config import NViTConfig
from vitdeploy.prune.registry import METHODS, DataOption, PruneMethod
from vitdeploy.prune.summaries import sparse24_summary

_NVIT = NViTConfig()


@schema
@dataclass
class Sparse24Config:
    finetune_steps: int = _NVIT.finetune_steps
    batch_size: int = _NVIT.batch_size
    lr: float = _NVIT.lr
    temperature: float = _NVIT.temperature
    seed: int = 0
    threads: int = 2

    def validate(self) -> "Sparse24Config":
        if self.finetune_steps < 0 or min(self.batch_size, self.threads) < 1:
            raise VitDeployError("--finetune-steps must be at least 0, --batch-size and --threads at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.temperature) and self.temperature > 0):
            raise VitDeployError("--lr and --temperature must be positive")
        return self

    def train_config(self):
        return NViTConfig(batch_size=self.batch_size, lr=self.lr, temperature=self.temperature, seed=self.seed,
                          threads=self.threads).train_config()


def run(model, config: Sparse24Config, context):
    from vitdeploy.data import dataset_for
    from vitdeploy.prune.sparsity import sparsify_and_fine_tune

    train_data = (dataset_for(model, context.data, "train", resize=context.resize, pipeline=context.pipeline)
                  if context.data else None)
    return sparsify_and_fine_tune(model, train_data, config.finetune_steps if train_data else 0,
                                  config.train_config(), context.eval_data, progress=context.progress)


METHODS.register(PruneMethod(
    name="sparse24", help="2:4 magnitude sparsity on every block Linear (dims multiples of 16)",
    description=__doc__.replace("\n", " "),
    config=Sparse24Config,
    options={"finetune_steps": "fine-tuning steps with the zeros kept (with --calib)",
             "batch_size": "fine-tuning batch", "lr": "fine-tuning peak learning rate",
             "temperature": "distillation temperature of the KL term to the dense model",
             "seed": "fine-tuning order"},
    run=run, summary=sparse24_summary,
    data=DataOption("--calib", "fine-tuning data (its train split); without it, masks only", required=False)))

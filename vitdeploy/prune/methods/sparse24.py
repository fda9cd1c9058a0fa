"""2:4 semi-structured sparsity: magnitude masks on every block Linear (NVIDIA's ASP recipe),
optionally fine-tuned with the zeros kept. Dims must be multiples of 16: prune with
``nvit --round-to 16`` first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.prune.registry import METHODS, DataOption, PruneMethod
from vitdeploy.prune.summaries import accuracy_lines
from vitdeploy.schema import schema
from vitdeploy.train.config import FINE_TUNE_LR, TrainConfig, fine_tune_config


@schema
@dataclass
class Sparse24Config:
    finetune_steps: Annotated[int, Field(ge=0)] = 40
    batch_size: Annotated[int, Field(ge=1)] = 128
    lr: Annotated[float, Field(gt=0)] = FINE_TUNE_LR
    temperature: Annotated[float, Field(gt=0)] = 1.0
    seed: int = 0
    threads: Annotated[int, Field(ge=1)] = 2

    def train_config(self) -> TrainConfig:
        return fine_tune_config(self.batch_size, self.lr, self.temperature, distill_weight=1.0, seed=self.seed,
                                threads=self.threads)


def run(model, config: Sparse24Config, context):
    from vitdeploy.data import dataset_for
    from vitdeploy.prune.sparsity import sparsify_and_fine_tune

    train_data = (dataset_for(model, context.data, "train", resize=context.resize, pipeline=context.pipeline)
                  if context.data else None)
    return sparsify_and_fine_tune(model, train_data, config.finetune_steps if train_data else 0,
                                  config.train_config(), context.eval_data, progress=context.progress)


def summary(report: dict, out: str) -> str:
    lines = [f"2:4 on {report['layers']} block Linears: {report['zeroed']} of {report['weights']} weights zeroed, "
             f"pattern verified: {report['verified_after']}"]
    lines += accuracy_lines(report.get("accuracy", {}))
    lines.append(f"saved {out}")
    return "\n".join(lines)


METHODS.register(PruneMethod(
    name="sparse24", help="2:4 magnitude sparsity on every block Linear (dims multiples of 16)",
    description=__doc__.replace("\n", " "),
    config=Sparse24Config,
    options={"finetune_steps": "fine-tuning steps with the zeros kept (with --calib)",
             "batch_size": "fine-tuning batch", "lr": "fine-tuning peak learning rate",
             "temperature": "distillation temperature of the KL term to the dense model",
             "seed": "fine-tuning order"},
    run=run, summary=summary,
    data=DataOption("--calib", "fine-tuning data (its train split); without it, masks only", required=False)))

"""2:4 semi-structured sparsity: magnitude masks on every block Linear (NVIDIA's ASP recipe),
optionally fine-tuned with the zeros kept. Dims must be multiples of 16: prune with
``nvit --round-to 16`` first."""

from __future__ import annotations

from dataclasses import dataclass

from vitdeploy.prune.registry import METHODS, DataOption, PruneMethod
from vitdeploy.prune.summaries import accuracy_lines
from vitdeploy.schema import schema
from vitdeploy.train.config import DistilledFineTune


@schema
@dataclass
class Sparse24Config(DistilledFineTune):
    """The fine-tune's settings; 2:4 has none of its own."""


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

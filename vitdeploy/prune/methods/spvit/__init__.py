"""SPViT (Kong et al.): multi-head token selectors after --selectors, a package token, and a
computation-aware loss for --budget-flops. Training decides per image (Gumbel-softmax); the saved
model and its export keep a static k = round(ρ_i × N) tokens per phase (top-k, no sort).
Checkpoints go to OUT.spvit-work/ and a run resumes from them."""

from __future__ import annotations

from vitdeploy.models.spec import PACKAGE_MODES
from vitdeploy.prune.registry import METHODS, DataOption, PruneMethod
from vitdeploy.prune.methods.spvit.config import FLAT_SCORES, SPViTConfig
from vitdeploy.prune.summaries import token_plan_lines


def run(model, config: SPViTConfig, context):
    from vitdeploy.data import dataset_for, holdout_split
    from vitdeploy.evaluate import evaluate
    from vitdeploy.prune.methods.spvit.algorithm import prune_spvit

    config.validate(model.spec.depth)
    train_data, validation = holdout_split(dataset_for(model, context.data, "train", resize=context.resize),
                                           config.val_size)
    pruned, report = prune_spvit(model, config, train_data, validation, f"{context.out}.spvit-work",
                                 progress=context.progress)
    report["validation"] = f"the last {config.val_size} images of {context.data}'s train split (held out from training)"
    if context.eval_data is not None:
        report["test_top1"] = evaluate(pruned, context.eval_data)
    return pruned, report


def summary(report: dict, out: str) -> str:
    lines = token_plan_lines(report)
    lines.append(f"validation top-1 {report['top1']:.4f} at the best epoch ({report['best_epoch']}; unpruned "
                 f"{report['teacher_top1']:.4f})")
    if "test_top1" in report:
        lines.append(f"test top-1 {report['test_top1']:.4f}")
    for phase in report["phases"]:
        if phase["score_spread"] < FLAT_SCORES:
            lines.append(f"warning: the selector after block {phase['after_block']} scores all tokens alike "
                         f"(spread {phase['score_spread']:.1e}): rounding noise decides its top-k, and the export's "
                         "parity check may fail. Train again (another --seed, --lr-selector or --lambda-ratio).")
    lines.append(f"saved {out}")
    return "\n".join(lines)


METHODS.register(PruneMethod(
    name="spvit", help="SPViT learned multi-head token selectors, trained (static top-k at export)",
    description=__doc__.replace("\n", " "),
    config=SPViTConfig,
    options={
        "budget_flops": "FLOPs budget as a ratio of the unpruned model's, in (0, 1]",
        "selectors": "blocks (from 1) followed by a selector, e.g. 3,6,9 (default: after ¼, ½, ¾ of the depth)",
        "epochs": "training epochs", "batch_size": "training batch",
        "lr_selector": "selector learning rate", "lr_backbone": "backbone learning rate",
        "lambda_ratio": "weight of the keep-ratio loss; raise it (e.g. 10) when a short run overshoots its keep "
                        "targets (the default is the paper's)",
        "package": "fold each step's dropped tokens into a package token",
        "package_mode": "add each phase's package token to the previous one, or keep both",
        "selector_heads": "selector heads (default: the block's)",
        "limit": "train on the first N images only",
        "val_size": "hold out the last N train images to choose the best epoch; --eval DATA also reports the "
                    "test split's top-1",
        "resume": "continue from OUT.spvit-work/ when it holds a checkpoint of the same run",
        "seed": "training order and Gumbel noise",
    },
    choices={"package_mode": PACKAGE_MODES}, run=run, summary=summary,
    data=DataOption("--data", "training data (its train split): fashion-mnist or an ImageFolder directory")))

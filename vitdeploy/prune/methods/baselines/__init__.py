"""Token-pruning baselines:

- ``uniform``: after every block but the last, keep the same share of the tokens entering it,
  ranked by class attention;
- ``cls-attn``: EViT-style, class-attention top-k at a few blocks only, optionally folding the
  rest into a package token. EViT drops tokens inside layers 4, 7 and 10 of 12, between their
  attention and MLP; our steps sit at block ends, so the default is after blocks 3, 6 and 9
  (after ¼, ½ and ¾ of the depth);
- ``random``: the uniform schedule with random fixed positions (seeded).
"""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import phase_blocks
from vitdeploy.prune.methods._tokens import run_token_method
from vitdeploy.prune.methods.baselines.config import BaselineConfig
from vitdeploy.prune.registry import METHODS, PruneMethod
from vitdeploy.prune.summaries import prune_summary
from vitdeploy.prune.token_config import TARGET_OPTIONS, TOKEN_OPTION_HELP

KEEP_HELP = ("explicit plan instead of --rate: comma-separated BLOCK:KEEP pairs (blocks from 1), KEEP a "
             "patch-token count (137) or a rate in (0, 1) (0.7)")
OPTIONS = {
    **TARGET_OPTIONS,
    "rate": "share of the patch tokens kept at each step, in (0, 1)",
    "keep": KEEP_HELP,
}


def steps(spec, config: BaselineConfig) -> list[int]:
    """0-based blocks that drop tokens: every block but the last, or cls-attn's few."""
    if config.method != "cls-attn":
        return list(range(spec.depth - 1))
    if config.blocks is None:
        return phase_blocks(spec.depth)
    try:
        blocks = sorted({int(b) - 1 for b in config.blocks.split(",") if b.strip()})
    except ValueError:
        raise VitDeployError(f"--blocks {config.blocks!r}: give block numbers such as 4,7,10") from None
    if not blocks or blocks[0] < 0 or blocks[-1] > spec.depth - 2:
        raise VitDeployError(f"--blocks {config.blocks!r}: blocks must be in 1..{spec.depth - 1} (not the last)")
    return blocks


def plan_baseline(model, config: BaselineConfig, images, progress: bool):
    from vitdeploy.prune.token_methods import knob_or_target
    from vitdeploy.models.token_plan import parse_keep

    spec = model.spec
    if config.keep is not None:
        return baseline_spec(spec, config, parse_keep(config.keep)), {}

    def make(rate: float):
        return baseline_spec(spec, config, {b: rate for b in steps(spec, config)})

    rate, plan = knob_or_target(config.rate, make, config, spec, (1e-3, 0.999), "rate")
    return plan, {"rate": rate}


def baseline_spec(spec, config: BaselineConfig, plan: dict):
    """Class-attention steps (or random fixed positions); a rate that would keep every token
    left (down to one) adds no step, while an explicit count above the tokens is an error."""
    import torch

    from vitdeploy.models.spec import TokenStep
    from vitdeploy.models.token_plan import keep_count

    generator = torch.Generator().manual_seed(config.seed)
    token_steps, n = {}, spec.num_patches
    for index in sorted(plan):
        keep = keep_count(plan[index], n)
        if isinstance(plan[index], float) and keep >= n:
            continue
        if config.method == "random":
            positions = torch.randperm(n, generator=generator)[:keep].sort().values.tolist()
            token_steps[index] = TokenStep(keep=keep, selector="fixed", positions=positions)
        else:
            token_steps[index] = TokenStep(keep=keep, selector="cls_attn", package=config.package)
        n = keep
    return spec.with_token_plan(token_steps)


def _baseline(name: str, help: str, description: str, extra: dict[str, str]) -> PruneMethod:
    return METHODS.register(PruneMethod(
        name=name, help=help, description=description + " Give --target-flops, --target-latency-ms with --lut, --rate or --keep.",
        config=BaselineConfig, options={**OPTIONS, **extra}, run=run_token_method, summary=prune_summary,
        fixed={"method": name}, plan=plan_baseline))


_baseline("uniform", "the same class-attention keep rate after every block but the last",
          "Class-attention top-k after every block but the last, each keeping the same share.", {})
_baseline("cls-attn", "EViT-style class-attention top-k at a few blocks (--blocks, --package)",
          "Class-attention top-k after a few blocks (default: after ¼, ½ and ¾ of the depth), optionally "
          "folding the dropped tokens into a package token.",
          {"blocks": "blocks (from 1) after which tokens drop (default: after ¼, ½, ¾ of the depth, e.g. 3,6,9 "
                     "of 12)",
           "package": "fold dropped tokens into a package token"})
_baseline("random", "the uniform schedule with random fixed positions",
          "The uniform schedule, keeping random (seeded) fixed positions.", {"seed": TOKEN_OPTION_HELP["seed"]})

"""ToMe (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023): bipartite soft matching
between attention and MLP, size-weighted merges and proportional attention; no training, no data."""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.prune.methods._tokens import run_token_method
from vitdeploy.prune.methods.tome import schedule
from vitdeploy.prune.methods.tome.config import SCHEDULES, ToMeConfig
from vitdeploy.prune.registry import METHODS, PruneMethod
from vitdeploy.prune.summaries import prune_summary
from vitdeploy.prune.token_config import TARGET_OPTIONS

OPTIONS = {
    "r": "patch tokens merged in each block but the last (0: the unmerged model)",
    "schedule": "how r spreads over the blocks: the same in each, or 2r first, decreasing linearly",
    "r_per_block": "an explicit schedule instead of --r: tokens merged in blocks 1, 2, ... (e.g. 8,8,6,4)",
    **TARGET_OPTIONS,
}


def plan_tome(model, config: ToMeConfig, images, progress: bool):
    from vitdeploy.prune.token_methods import knob_or_target

    spec = model.spec
    if config.r_per_block is not None:
        merges = list(config.r_per_block)
        return schedule.tome_spec(spec, merges), {"r_per_block": merges}
    largest = schedule.largest_r(spec, config.schedule)
    if config.r is not None and config.r > largest:
        raise VitDeployError(f"--r {config.r} merges more tokens than the blocks have: with the {config.schedule} "
                             f"schedule this model merges at most r={largest}")

    def make(r: float):
        return schedule.tome_spec(spec, schedule.per_block(r, spec.depth, config.schedule))

    r, plan = knob_or_target(config.r, make, config, spec, (0.0, float(largest)), "r", increasing=False,
                             progress=progress)
    return plan, {"r": round(r, 3), "r_per_block": schedule.per_block(r, spec.depth, config.schedule)}


METHODS.register(PruneMethod(
    name="tome", help="token merging: similar tokens merged between attention and MLP (no data, no training)",
    description="ToMe (Bolya et al.): in each block, patch tokens alternate into sets A and B; each A token finds "
                "its most similar B token by their keys, and the r best pairs merge by size-weighted average. "
                "Attention is then proportional to each token's size. Exported with TopK of static k, never a "
                "sort. Give --r, --r-per-block, --target-flops, or --target-latency-ms with --lut.",
    config=ToMeConfig, options=OPTIONS, run=run_token_method, summary=prune_summary,
    plan=plan_tome, choices={"schedule": SCHEDULES}))

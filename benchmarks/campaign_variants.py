"""The model variants the GPU campaign times against their baseline, all from the project's own pruning code.

Latency depends on shapes, token counts and kernels, not on what the weights learned, so the
variants start from seeded random weights and need no calibration images:

- ``keep``: the static token plan ``--keep 4:0.7,7:0.7,10:0.7`` (class-attention top-k);
- ``STAR-shaped``: STAR's keep rates (``star.keep_rates``, their Eq. 5) at ρ = 0.7 for an average
  cosine similarity that rises linearly with depth, with uniform inter-layer scores, so the plan
  has STAR's shape and its fused-score selector's cost;
- ``ToMe``: token merging with r = 13 in every block but the last (the paper's DeiT-S setting;
  the largest r the model's blocks can merge on smaller models);
- ``NViT-shaped``: NViT's global ranking (``structural.plan_removals``: magnitude importance of
  these weights minus η × FLOPs share) and compaction (``structural.compact``) in one shot down to
  0.5× the FLOPs, every pruned dim a multiple of 64, which keeps every block Linear inside
  torch's 2:4 shape rules (``NVIT_ROUND_TO``);
- ``2:4``: magnitude 2:4 masks (``sparsity.sparsify_24``) on the full and on the NViT-shaped model;
  their specs record 2:4, so ``bench_sources`` builds them with sparse kernels where it can.
"""

from __future__ import annotations

from vitdeploy.models.spec import ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.prune.methods.nvit.importance import magnitude_importance
from vitdeploy.prune.methods.tome.schedule import largest_r, per_block, tome_spec
from vitdeploy.prune.methods.nvit.config import NViTConfig
from vitdeploy.prune.sparsity import sparsify_24
from vitdeploy.prune.methods.star.algorithm import StarStatistics, star_spec
from vitdeploy.prune.costs import flops_cost
from vitdeploy.prune.methods.nvit.structural import compact, plan_removals
from vitdeploy.models.token_plan import apply_keep_plan, with_spec

KEEP_PLAN = "4:0.7,7:0.7,10:0.7"
STAR_RHO = 0.7
TOME_R = 13
NVIT_FLOPS = 0.5
NVIT_ROUND_TO = 64
"""Multiples of 64 fit both of torch's fp16/bf16 2:4 backends (cuSPARSELt: 16 × 16; CUTLASS: 32 rows
× 64 columns), and per-head dims stay at DeiT's 64, so fused SDPA keeps its flash kernel."""
BASELINE = "baseline"


def campaign_variants(base: ViT) -> dict[str, ViT]:
    """The baseline first (the others' speedups are relative to it), then every variant."""
    nvit = nvit_shaped(base, NVIT_FLOPS)
    return {
        BASELINE: base,
        f"keep {KEEP_PLAN}": apply_keep_plan(base, KEEP_PLAN),
        f"STAR-shaped ρ={STAR_RHO}": with_spec(base, star_shaped_spec(base.spec, STAR_RHO)),
        "ToMe": with_spec(base, tome_shaped_spec(base.spec, TOME_R)),
        f"NViT-shaped {NVIT_FLOPS}× FLOPs": nvit,
        "2:4": sparsify_24(base)[0],
        "2:4 + NViT-shaped": sparsify_24(nvit)[0],
    }


def star_shaped_spec(spec: ViTSpec, rho: float) -> ViTSpec:
    """STAR's plan at ``rho`` for an ACS rising linearly with depth and uniform inter-layer scores."""
    depth, patches = spec.depth, spec.num_patches
    stats = StarStatistics(acs=[layer / (depth - 1) for layer in range(depth)],
                           inter_scores=[[1.0] * patches for _ in range(depth)])
    return star_spec(spec, stats, rho)


def tome_shaped_spec(spec: ViTSpec, r: int) -> ViTSpec:
    """ToMe merging ``r`` tokens in every block but the last, or as many as the model allows."""
    return tome_spec(spec, per_block(min(r, largest_r(spec, "constant")), spec.depth, "constant"))


def nvit_shaped(model: ViT, ratio: float) -> ViT:
    """``model`` compacted by one NViT ranking pass (magnitude importance, FLOPs cost) to ≤ ``ratio`` × its FLOPs."""
    goal = ratio * flops_cost(model.spec)
    keep, _ = plan_removals(model.spec, magnitude_importance(model), goal, flops_cost, flops_cost,
                            eta=NViTConfig().eta, round_to=NVIT_ROUND_TO, floor=goal)
    return compact(model, keep)

"""STAR (Zhang et al., "Synergistic Patch Pruning for Vision Transformer"): fused scores and
ACS-derived keep rates, computed offline on calibration data.

- Inter-layer scores (their Alg. 2, after Chefer et al.): for the top-γ classes of each image,
  backpropagate the class logit to every block's attention map A_l, form
  ``Ā_l = I + E_h[(∇A_l ⊙ R_l)^+]`` and roll out ``S_l = Ā_L ··· Ā_l``; the class-token row of S_l
  scores the tokens entering block l. Averaged over images, classes and T rounds, it is stored
  per layer and *original patch position*. For the relevance R_l of the attention map we use the
  attention itself, the rule of Chefer et al.'s "Generic Attention-model Explainability" (ICCV
  2021), instead of a full LRP pass through every layer. The product runs from the last layer
  down, so that row 0 composes layer to layer (STAR's Alg. 2 writes the factors in the opposite
  order).
- Intra-layer scores: the class token's attention, averaged over heads, computed online.
- Fusion (their Eq. 4): ``S ∝ S_intra^α · S_inter^(1−α)``, the KL centroid of the two pmfs.
- Keep rates (their Eq. 5 and step 8): the average cosine similarity ACS_l of the tokens leaving
  block l, and ``p_l = (ρ−1)/(ACS_L−ACS_1)·ACS_l + (ACS_L − ρ·ACS_1)/(ACS_L−ACS_1)``, so p_1 = 1
  and p_L = ρ; layer l keeps ``ceil(p_l·N_l)`` of the N_l patch tokens entering it.
- Placement. STAR drops inside layer l, between its attention and its MLP; our token steps sit
  at block ends (attention stays one fused op). Layer l's rate is therefore applied by a step
  at the end of block l − 1, to the tokens entering block l, ranked by block l − 1's class
  attention fused with S_l (the inter-layer score of exactly those tokens). Block l's
  attention then also runs on the kept tokens, so at equal ρ our plan has slightly fewer FLOPs
  than the paper's; placing the step at the end of block l instead would leave the last rate
  unused and, on the 6-block reference model, could not go below 0.63× FLOPs.
- a-STAR: per image, the fewest tokens whose normalised fused scores reach p_l (see
  ``vitdeploy.tokens.select.adaptive_keep_mask``): not a static graph, evaluated in PyTorch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from vitdeploy import runtime
from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import TokenStep, ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.prune.calibrate import trace

SCORE_FLOOR = 1e-8
"""Inter-layer scores are floored here: a score of 0 would veto a token whatever its attention."""


@dataclass
class StarStatistics:
    """What STAR measures offline: per block, ACS and the inter-layer score of every patch position."""

    acs: list[float]
    inter_scores: list[list[float]]

    def to_dict(self) -> dict:
        return {"acs": self.acs, "inter_scores": self.inter_scores}


def average_cosine_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Their Eq. 5 per image: the mean cosine similarity over all pairs of distinct tokens, (B,)."""
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    gram = unit @ unit.transpose(1, 2)
    n = tokens.shape[1]
    off_diagonal = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)
    return off_diagonal / (n * (n - 1))


def layer_acs(model: ViT, images: torch.Tensor, batch_size: int = 64) -> list[float]:
    """ACS of the tokens leaving each block, averaged over ``images`` (in a torchrun job each
    process takes its share of the images and the sums are added up)."""
    rt = runtime.current()
    local = rt.shard(images)
    totals = torch.zeros(model.spec.depth, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(local), batch_size):
            t = trace(model, rt.to_device(local[start:start + batch_size])[0])
            totals += torch.stack([average_cosine_similarity(x).sum() for x in t.outputs]).double().cpu()
    return (rt.reduce_sum(totals) / len(images)).tolist()


def inter_layer_scores(model: ViT, images: torch.Tensor, gamma: int, rounds: int, batch_size: int,
                       seed: int = 0, progress: bool = True) -> list[list[float]]:
    """Their Alg. 2 (with the relevance rule in the module docstring): per block, a pmf over the
    original patch positions. Each of ``rounds`` rounds draws ``batch_size`` calibration images
    (in a torchrun job each process rolls out its share of the draw; the sums are added up)."""
    rt = runtime.current()
    gamma = min(gamma, model.spec.num_classes)
    generator = torch.Generator().manual_seed(seed)
    prefix = model.spec.num_prefix_tokens
    totals = torch.zeros(model.spec.depth, model.spec.num_patches, dtype=torch.float64)
    for _ in tqdm(range(rounds), desc="STAR inter-layer scores", disable=not progress):
        batch = rt.shard(images[torch.randperm(len(images), generator=generator)[:batch_size]])
        for rollout in _class_rollouts(model, rt.to_device(batch)[0], gamma):
            totals += rollout[:, :, 0, prefix:].sum(dim=1).double().cpu()
    totals = rt.reduce_sum(totals)
    scores = totals / totals.sum(dim=1, keepdim=True)
    return scores.clamp_min(SCORE_FLOOR).tolist()


def _class_rollouts(model: ViT, images: torch.Tensor, gamma: int):
    """For each of the γ top classes: the rollouts S_l = Ā_L···Ā_l of every block, (L, B, N, N)."""
    t = trace(model, images, requires_grad=True)
    top_classes = t.logits.topk(gamma, dim=1).indices
    for rank in range(gamma):
        for a in t.attention:
            a.grad = None
        t.logits.gather(1, top_classes[:, rank:rank + 1]).sum().backward(retain_graph=rank < gamma - 1)
        yield _rollouts([a.detach() for a in t.attention], [a.grad for a in t.attention])


def _rollouts(attention: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    n = attention[0].shape[-1]
    eye = torch.eye(n, device=attention[0].device)
    rollout, result = None, []
    for a, g in zip(reversed(attention), reversed(grads)):
        relevance_map = eye + (g * a).clamp_min(0).mean(dim=1)
        rollout = relevance_map if rollout is None else rollout @ relevance_map
        result.append(rollout)
    return torch.stack(result[::-1])


def calibrate(model: ViT, images: torch.Tensor, gamma: int = 6, rounds: int = 10, batch_size: int = 32,
              seed: int = 0, progress: bool = True) -> StarStatistics:
    """ACS and inter-layer scores of an unpruned ``model`` on calibration ``images`` (run on the
    current runtime's device)."""
    with runtime.current().on_device(model):
        return StarStatistics(layer_acs(model, images),
                              inter_layer_scores(model, images, gamma, rounds, batch_size, seed, progress))


def keep_rates(acs: list[float], rho: float) -> list[float]:
    """p_l for every block (their step 8), clipped to (0, 1]."""
    if not 0 < rho <= 1:
        raise VitDeployError(f"ρ (--rho) must be in (0, 1], got {rho}")
    first, last = acs[0], acs[-1]
    if not last > first:
        raise VitDeployError(f"STAR's keep rates need the last block's ACS ({last:.4f}) above the first's "
                             f"({first:.4f}); this model's token similarity does not grow with depth")
    slope = (rho - 1) / (last - first)
    return [min(1.0, max(SCORE_FLOOR, slope * a + (last - rho * first) / (last - first))) for a in acs]


def star_spec(spec: ViTSpec, stats: StarStatistics, rho: float, alpha: float = 0.15,
              adaptive: bool = False) -> ViTSpec:
    """The spec with STAR steps at ρ (static top-k, or a-STAR with ``adaptive``): layer l's rate
    p_l, applied to the tokens entering block l by a step at the end of block l − 1."""
    if not 0 <= alpha <= 1:
        raise VitDeployError(f"α (--alpha) must be in [0, 1], got {alpha}")
    plan, n = {}, spec.num_patches
    for layer, rate in enumerate(keep_rates(stats.acs, rho)[1:], start=1):
        keep = math.ceil(rate * n)
        if keep < n:
            plan[layer - 1] = TokenStep(keep=keep, selector="star", alpha=alpha, inter_scores=stats.inter_scores[layer],
                                        adaptive_rate=rate if adaptive else None)
            n = keep
    return spec.with_token_plan(plan)

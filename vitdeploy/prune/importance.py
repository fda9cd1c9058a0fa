"""Importance of the prunable structural groups of a ViT (NViT, Yang et al.).

A *dim* is one prunable dimension of the network, named like the keys ``group_sums`` returns:

- ``emb``: the embedding channels, shared by the patch embedding, class/distillation tokens,
  position embedding, every norm, every block's input/output projections and the head(s);
- ``blocks.{i}.heads``: the heads of block i;
- ``blocks.{i}.qk``: the per-head query/key dims of block i (one index prunes it in every head);
- ``blocks.{i}.v``: the per-head value dims of block i (likewise), with the matching ``proj`` inputs;
- ``blocks.{i}.mlp``: the hidden neurons of block i's MLP.

Each index of a dim is a *group* S: every weight that pruning it removes. The criteria score a
group from a per-weight quantity summed over S:

- ``hessian``: I_S = (Σ_{s∈S} ∂L/∂w_s · w_s)², which is (∂L/∂g_S)² for a gate g_S = 1 that
  multiplies every weight of S (the paper's Eq. 6), computed per calibration batch and averaged;
- ``magnitude``: ‖W_S‖₂², the plain global magnitude criterion the paper compares against.

Both are additive over groups, so a unit of several groups removed together scores the sum of
its groups' scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from vitdeploy.models.vit import ViT
from vitdeploy.prune.nvit_config import CRITERIA

BLOCK_DIMS = ("heads", "qk", "v", "mlp")
LossFn = Callable[[ViT, torch.Tensor, torch.Tensor], torch.Tensor]


def dim_key(block: int, kind: str) -> str:
    """The name of a block's dim, e.g. ``blocks.2.mlp``."""
    return f"blocks.{block}.{kind}"


def group_sums(model: ViT, per_weight: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum a per-weight quantity (shaped like each parameter) over every group of every dim.

    ``per_weight`` maps parameter names (as in ``model.named_parameters()``) to tensors of the
    parameter's shape. Returns one 1-D tensor per dim (keys as in the module docstring).
    """
    spec, t = model.spec, per_weight
    emb = (t["patch_embed.proj.weight"].flatten(1).sum(1) + t["patch_embed.proj.bias"]
           + _channel_sum(t["cls_token"]) + _channel_sum(t["pos_embed"])
           + t["norm.weight"] + t["norm.bias"] + t["head.weight"].sum(0))
    if spec.distilled:
        emb = emb + _channel_sum(t["dist_token"]) + t["head_dist.weight"].sum(0)
    sums: dict[str, torch.Tensor] = {}
    for i, block in enumerate(spec.blocks):
        p = f"blocks.{i}."
        emb = emb + sum(t[p + name] for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                                                 "attn.proj.bias", "mlp.fc2.bias"))
        emb = emb + (t[p + "attn.qkv.weight"].sum(0) + t[p + "attn.proj.weight"].sum(1)
                     + t[p + "mlp.fc1.weight"].sum(0) + t[p + "mlp.fc2.weight"].sum(1))
        rows = t[p + "attn.qkv.weight"].sum(1)
        if spec.qkv_bias:
            rows = rows + t[p + "attn.qkv.bias"]
        h, qk, v = block.heads, block.qk_dim, block.v_dim
        q_rows, k_rows, v_rows = (r.reshape(h, -1) for r in rows.split([h * qk, h * qk, h * v]))
        proj_cols = t[p + "attn.proj.weight"].sum(0).reshape(h, v)
        sums[dim_key(i, "heads")] = q_rows.sum(1) + k_rows.sum(1) + v_rows.sum(1) + proj_cols.sum(1)
        sums[dim_key(i, "qk")] = q_rows.sum(0) + k_rows.sum(0)
        sums[dim_key(i, "v")] = v_rows.sum(0) + proj_cols.sum(0)
        sums[dim_key(i, "mlp")] = (t[p + "mlp.fc1.weight"].sum(1) + t[p + "mlp.fc1.bias"]
                                   + t[p + "mlp.fc2.weight"].sum(0))
    return {"emb": emb, **sums}


@torch.no_grad()
def magnitude_importance(model: ViT) -> dict[str, torch.Tensor]:
    """‖W_S‖₂² of every group: the sum of squares of all the weights that pruning the group removes."""
    return group_sums(model, {name: param.detach() ** 2 for name, param in model.named_parameters()})


def hessian_importance(model: ViT, calibration: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       loss_fn: LossFn) -> dict[str, torch.Tensor]:
    """NViT's Hessian-aware importance (Σ_{s∈S} ∂L/∂w_s · w_s)², averaged over calibration batches.

    One forward and backward pass per batch of ``calibration``; ``loss_fn(model, x, y)`` gives
    the loss (NViT: cross-entropy plus distillation from the unpruned model). The model's
    gradients are cleared afterwards.
    """
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for x, y in calibration:
        model.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        with torch.no_grad():
            products = {name: param.grad * param for name, param in model.named_parameters()}
            for key, value in group_sums(model, products).items():
                totals[key] = totals.get(key, 0) + value**2
        count += 1
    model.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("hessian_importance needs at least one calibration batch")
    return {key: total / count for key, total in totals.items()}


def group_importance(criterion: str, model: ViT, calibration: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     loss_fn: LossFn) -> dict[str, torch.Tensor]:
    """The importance of every group under ``criterion`` (one of ``CRITERIA``)."""
    if criterion == "hessian":
        return hessian_importance(model, calibration, loss_fn)
    if criterion == "magnitude":
        return magnitude_importance(model)
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")


def _channel_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a (1, T, D) token parameter over everything but its channel axis."""
    return tensor.reshape(-1, tensor.shape[-1]).sum(0)

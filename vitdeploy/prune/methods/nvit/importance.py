"""Importance of the prunable structural groups of a ViT (NViT, Yang et al.).

The dims are those of the structure map (``vitdeploy.models.groups``). Each index of a dim is a
*group* S: every weight that pruning it removes. The criteria score a group from a per-weight
quantity summed over S:

- ``hessian``: I_S = (Σ_{s∈S} ∂L/∂w_s · w_s)², which is (∂L/∂g_S)² for a gate g_S = 1 that
  multiplies every weight of S (the paper's Eq. 6), computed per calibration batch and averaged;
- ``magnitude``: ‖W_S‖₂², the plain global magnitude criterion the paper compares against.

Both are additive over groups, so a unit of several groups removed together scores the sum of
its groups' scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from vitdeploy import runtime
from vitdeploy.models.groups import structure_map
from vitdeploy.models.vit import ViT
from vitdeploy.prune.methods.nvit.config import CRITERIA

LossFn = Callable[[ViT, torch.Tensor, torch.Tensor], torch.Tensor]


def group_sums(model: ViT, per_weight: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum a per-weight quantity (shaped like each parameter) over every group of every dim.

    ``per_weight`` maps parameter names (as in ``model.named_parameters()``) to tensors of the
    parameter's shape. Returns one 1-D tensor per dim, keyed as in ``groups.all_dims``.
    """
    return {dim: sum(_along(per_weight[s.param], s.axis)[s.positions].sum(1) for s in slices)
            for dim, slices in structure_map(model.spec).items()}


@torch.no_grad()
def magnitude_importance(model: ViT) -> dict[str, torch.Tensor]:
    """‖W_S‖₂² of every group: the sum of squares of all the weights that pruning the group removes."""
    return group_sums(model, {name: param.detach() ** 2 for name, param in model.named_parameters()})


def hessian_importance(model: ViT, calibration: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       loss_fn: LossFn) -> dict[str, torch.Tensor]:
    """NViT's Hessian-aware importance (Σ_{s∈S} ∂L/∂w_s · w_s)², averaged over calibration batches.

    One forward and backward pass per batch of ``calibration``; ``loss_fn(model, x, y)`` gives
    the loss (NViT: cross-entropy plus distillation from the unpruned model). The model's
    gradients are cleared afterwards. It runs on the current runtime's device under its autocast
    (the model and whatever ``loss_fn`` runs must be there); the sums are taken in fp32. In a
    torchrun job a batch is this process's share of a global batch: the group sums are summed
    over the processes before they are squared, so every process gets the global batch's scores.
    """
    rt = runtime.current()
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for x, y in calibration:
        x, y = rt.to_device(x, y)
        share = len(x) / rt.global_count(len(x))
        model.zero_grad(set_to_none=True)
        with rt.autocast():
            loss = loss_fn(model, x, y)
        (loss * share if share != 1 else loss).backward()
        with torch.no_grad():
            products = {name: param.grad.float() * param.float() for name, param in model.named_parameters()}
            for key, value in _summed_over_processes(rt, group_sums(model, products)).items():
                totals[key] = totals.get(key, 0) + value**2
        count += 1
    model.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("hessian_importance needs at least one calibration batch")
    return {key: total / count for key, total in totals.items()}


def _summed_over_processes(rt: runtime.Runtime, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if rt.world_size == 1:
        return sums
    flat = rt.reduce_sum(torch.cat(list(sums.values()))).float()
    return dict(zip(sums, flat.split([len(v) for v in sums.values()])))


def group_importance(criterion: str, model: ViT, calibration: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     loss_fn: LossFn) -> dict[str, torch.Tensor]:
    """The importance of every group under ``criterion`` (one of ``CRITERIA``)."""
    if criterion == "hessian":
        return hessian_importance(model, calibration, loss_fn)
    if criterion == "magnitude":
        return magnitude_importance(model)
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")


def _along(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """Sum ``tensor`` over every axis but ``axis``."""
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1).sum(1)

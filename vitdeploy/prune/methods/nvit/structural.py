"""NViT: global structural pruning of a ViT with latency-aware Hessian importance (Yang et al.).

The prunable dims (see ``vitdeploy.models.groups``) are the shared embedding channels and,
per block, the heads, the per-head QK dims, the per-head V dims and the MLP neurons. The
per-head dims are addressed through the structure map's head-major view of the fused
``qkv``/``proj`` weights: the result is an ordinary ``ViT`` whose blocks have their own dims.

One pruning step:

1. score every group on a few calibration batches (loss = CE + KL to the unpruned model);
2. rank the removable units globally by ``I^L = I/ΣI − η·(Lat(W) − Lat(W∖S))/Lat(W)``: the
   group's share of the total importance minus η times its share of the cost; removing them,
   least first, until the step's cost goal is met. A unit is the ``round_to`` least important
   channels of one dim (one head for ``heads``), so every dim stays a multiple of ``round_to``;
3. compact: build the smaller dense model and check it against the masked model (zeroed
   weights, norms over the kept channels only) on a calibration batch;
4. fine-tune it for a few steps, distilling from the unpruned model.

Steps repeat, each lowering the cost by ``prune_step`` of the original, until the target FLOPs
ratio or predicted latency is met; then a final fine-tune.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from vitdeploy import runtime
from vitdeploy.data import batches
from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import evaluate
from vitdeploy.lut.table import LatencyTable, StemGeometry, load_table, predict
from vitdeploy.prune.costs import CostFn, flops_cost, lut_latency
from vitdeploy.models.flops import total_macs
from vitdeploy.models.groups import EMB, all_dims, dim_size, kept_masks, structure_map, with_dim_sizes
from vitdeploy.models.spec import ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.prune.methods.nvit.importance import group_importance
from vitdeploy.prune.methods.nvit.config import NViTConfig
from vitdeploy.threads import torch_threads
from vitdeploy.train.loop import fine_tune, training_loss

COMPACTION_TOLERANCE = 1e-5


# --- ranking and removal --------------------------------------------------------------------------

@dataclass(frozen=True)
class Removal:
    """One unit taken out of a dim: its channels (indices into the current dim) and its rank terms."""

    dim: str
    channels: tuple[int, ...]
    importance_share: float
    cost_share: float
    score: float

    def to_dict(self) -> dict:
        return {"dim": self.dim, "count": len(self.channels), "importance_share": self.importance_share,
                "cost_share": self.cost_share, "score": self.score}


def shrink(spec: ViTSpec, dim: str, count: int) -> ViTSpec:
    """A copy of ``spec`` with ``count`` fewer channels in ``dim`` (for cost estimates)."""
    return with_dim_sizes(spec, {dim: dim_size(spec, dim) - count})


def unit_size(dim: str, size: int, round_to: int) -> int | None:
    """How many channels the next removal from a dim of ``size`` takes, or None if it is at its minimum.

    Heads go one at a time down to one head. Other dims lose ``round_to`` channels at a time
    (first ``size % round_to``, so that they become multiples) down to ``round_to``.
    """
    unit = 1 if dim.endswith(".heads") else round_to
    count = size % unit or unit
    return count if size - count >= unit else None


def smallest_spec(spec: ViTSpec, round_to: int) -> ViTSpec:
    """The smallest model pruning can reach: every dim at its minimum."""
    for dim in all_dims(spec):
        while (count := unit_size(dim, dim_size(spec, dim), round_to)) is not None:
            spec = shrink(spec, dim, count)
    return spec


def plan_removals(spec: ViTSpec, scores: Mapping[str, torch.Tensor], goal: float, measure: CostFn,
                  rank_cost: CostFn, eta: float, round_to: int,
                  floor: float | None = None) -> tuple[dict[str, torch.Tensor], list[Removal]]:
    """Remove the lowest-ranked units, one at a time, until ``measure(spec) <= goal``.

    Each unit's rank is ``importance share − eta × cost share``, with the cost share under
    ``rank_cost`` recomputed after every removal (removals interact: fewer heads make QK dims
    cheaper). Units whose removal would take ``measure`` below ``floor`` (the overall target)
    are passed over while any other unit is left, so a large unit (a chunk of embedding
    channels) cannot overshoot the target. Returns the keep masks (one bool tensor per dim) and
    the removals in order.
    """
    keep = {dim: torch.ones(len(s), dtype=torch.bool) for dim, s in scores.items()}
    order = {dim: torch.argsort(s, stable=True).tolist() for dim, s in scores.items()}
    taken = {dim: 0 for dim in scores}
    total_importance = max(sum(float(s.sum()) for s in scores.values()), torch.finfo(torch.float32).tiny)
    removals: list[Removal] = []
    while measure(spec) > goal:
        cost = rank_cost(spec)
        candidates = []
        for dim in scores:
            count = unit_size(dim, dim_size(spec, dim), round_to)
            if count is None:
                continue
            channels = tuple(order[dim][taken[dim]:taken[dim] + count])
            importance = float(scores[dim][list(channels)].sum()) / total_importance
            cost_share = (cost - rank_cost(shrink(spec, dim, count))) / cost
            candidates.append(Removal(dim, channels, importance, cost_share, importance - eta * cost_share))
        if not candidates:
            raise VitDeployError(f"cannot prune below {measure(spec):.4g} to reach {goal:.4g}: every dim is at "
                                 "its minimum; choose a larger target")
        if floor is not None:
            candidates = [r for r in candidates
                          if measure(shrink(spec, r.dim, len(r.channels))) >= floor] or candidates
        best = min(candidates, key=lambda r: r.score)
        keep[best.dim][list(best.channels)] = False
        taken[best.dim] += len(best.channels)
        spec = shrink(spec, best.dim, len(best.channels))
        removals.append(best)
    return keep, removals


# --- compaction -----------------------------------------------------------------------------------

class MaskedLayerNorm(nn.Module):
    """LayerNorm over the kept channels only; the pruned channels come out as 0.

    With it, a ViT whose pruned groups are zeroed computes exactly what its compacted version does.
    """

    def __init__(self, norm: nn.LayerNorm, kept: torch.Tensor):
        super().__init__()
        self.register_buffer("kept", kept.to(norm.weight.dtype), persistent=False)
        self.weight = nn.Parameter(norm.weight.detach() * self.kept)
        self.bias = nn.Parameter(norm.bias.detach() * self.kept)
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = self.kept.sum()
        mean = (x * self.kept).sum(-1, keepdim=True) / count
        centred = (x - mean) * self.kept
        variance = centred.pow(2).sum(-1, keepdim=True) / count
        return centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias


def kept_spec(spec: ViTSpec, keep: Mapping[str, torch.Tensor]) -> ViTSpec:
    """The spec of the compacted model: kept counts per dim, the original attention scales, dense."""
    scaled = dataclasses.replace(spec, blocks=[dataclasses.replace(b, attn_scale=b.scale) for b in spec.blocks],
                                 sparsity=None)
    return with_dim_sizes(scaled, {dim: int(mask.sum()) for dim, mask in keep.items()}).validate()


def kept_indices(spec: ViTSpec, keep: Mapping[str, torch.Tensor]) -> dict[str, dict[int, torch.Tensor]]:
    """For every parameter: axis → the indices that survive (axes not listed survive whole)."""
    return {param: {axis: mask.nonzero().flatten() for axis, mask in axes.items()}
            for param, axes in kept_masks(spec, keep).items()}


def compact(model: ViT, keep: Mapping[str, torch.Tensor]) -> ViT:
    """A genuinely smaller dense ViT holding only the kept groups, in the usual concatenated layout."""
    selections = kept_indices(model.spec, keep)
    state = {}
    for name, tensor in model.state_dict().items():
        for axis, index in selections.get(name, {}).items():
            tensor = tensor.index_select(axis, index)
        state[name] = tensor.clone()
    compacted = ViT(kept_spec(model.spec, keep))
    compacted.load_state_dict(state)
    return compacted.eval()


def masked_model(model: ViT, keep: Mapping[str, torch.Tensor]) -> ViT:
    """A copy of ``model`` with every pruned group zeroed and its norms over the kept channels only."""
    masked = copy.deepcopy(model).eval()
    masks = kept_masks(model.spec, keep)
    with torch.no_grad():
        for name, param in masked.named_parameters():
            for axis, mask in masks.get(name, {}).items():
                param.mul_(mask.to(param.dtype).reshape([-1 if a == axis else 1 for a in range(param.ndim)]))
    embedding_params = {s.param for s in structure_map(model.spec)[EMB]}
    for name, module in list(masked.named_modules()):
        if isinstance(module, nn.LayerNorm) and f"{name}.weight" in embedding_params:
            masked.set_submodule(name, MaskedLayerNorm(module, keep[EMB]))
    return masked


@torch.no_grad()
def compaction_error(model: ViT, keep: Mapping[str, torch.Tensor], compacted: ViT, x: torch.Tensor) -> float:
    """Max |masked model − compacted model| over the logits for ``x``, computed in float64."""
    reference = masked_model(model, keep).double()(x.double())
    return (reference - copy.deepcopy(compacted).double()(x.double())).abs().max().item()


def require_exact_compaction(error: float) -> None:
    """Compaction must not change the outputs; NaN/Inf outputs (a diverged fine-tune) are a user error."""
    if not math.isfinite(error):
        raise VitDeployError("the model's outputs became NaN or infinite while pruning (a fine-tune diverged): "
                             "lower --lr and prune again")
    if error > COMPACTION_TOLERANCE:
        raise RuntimeError(f"compaction changed the outputs by {error:.2e} > {COMPACTION_TOLERANCE:.0e}")


# --- the pruning loop -----------------------------------------------------------------------------

class NViTPruner:
    """Iterative NViT pruning of a copy of ``model``; the original stays as the distillation teacher.

    ``prune_to(ratio)`` runs pruning steps until the cost is at most ``ratio`` × the original's.
    It can be called again with a smaller ratio, so one run yields snapshots at several levels
    (as the paper derives its NViT family from one run); ``fine_tune`` fine-tunes a snapshot.
    """

    def __init__(self, model: ViT, config: NViTConfig, calib_data, lut: LatencyTable | None = None,
                 progress: bool = False):
        self.config = config.validate()
        if config.target_latency_ms is not None and lut is None:
            raise VitDeployError("--target-latency-ms needs a latency table: pass --lut FILE")
        _require_prunable(model)
        runtime.current().require_divisible_batch(config.batch_size)
        self.teacher = model.eval()
        self.model = copy.deepcopy(model).eval()
        self.calib_data = calib_data
        self.lut = lut
        self.measure = lut_latency(lut) if config.target_latency_ms is not None else flops_cost
        self.rank_cost = lut_latency(lut) if lut is not None else flops_cost
        self.base_cost = self.measure(model.spec)
        self.progress = progress
        self.steps: list[dict] = []

    @property
    def target_ratio(self) -> float:
        """The configured target as a fraction of the original cost."""
        if self.config.target_flops is not None:
            return self.config.target_flops
        return self.config.target_latency_ms / self.base_cost

    @property
    def ratio(self) -> float:
        """The current model's cost as a fraction of the original's."""
        return self.measure(self.model.spec) / self.base_cost

    def prune_to(self, ratio: float) -> ViT:
        """Prune until the cost is at most ``ratio`` × the original's; return the current model."""
        self._require_reachable(ratio)
        total = math.ceil(max(0.0, self.ratio - ratio) / self.config.prune_step - 1e-9)
        with torch_threads(self.config.threads), tqdm(total=total, desc=f"nvit to {ratio:.3g}×",
                                                      disable=not self.progress) as bar:
            while self.measure(self.model.spec) > ratio * self.base_cost:
                self.step(max(ratio, self.ratio - self.config.prune_step), floor_ratio=ratio)
                bar.update()
                bar.set_postfix(ratio=f"{self.ratio:.3f}")
        return self.model

    def step(self, goal_ratio: float, floor_ratio: float | None = None) -> None:
        """One pruning step: importance, removals down to ``goal_ratio`` (not below ``floor_ratio``
        where avoidable), compaction, short fine-tune."""
        started, index = time.perf_counter(), len(self.steps)
        calibration = list(itertools.islice(
            batches(self.calib_data, self.config.batch_size, shuffle=True, seed=self.config.seed + 1000 + index,
                    shard=True),
            self.config.calib_batches))
        with runtime.current().on_device(self.model, self.teacher):
            scores = group_importance(self.config.criterion, self.model, calibration, self._loss)
        floor = None if floor_ratio is None else floor_ratio * self.base_cost
        keep, removals = plan_removals(self.model.spec, scores, goal_ratio * self.base_cost, self.measure,
                                       self.rank_cost, self.config.eta, self.config.round_to, floor)
        compacted = compact(self.model, keep)
        error = compaction_error(self.model, keep, compacted, calibration[0][0][:16])
        require_exact_compaction(error)
        self.model = compacted
        tune = self.fine_tune(self.model, self.config.finetune_steps, f"fine-tune {index + 1}", seed_offset=index + 1)
        self.steps.append({
            "step": index + 1, "goal_ratio": goal_ratio, "ratio": self.ratio,
            "removed": [r.to_dict() for r in removals], "compaction_max_abs_diff": error,
            "finetune_loss": tune["final_loss"], "finetune_losses": tune["losses"],
            "seconds": round(time.perf_counter() - started, 2),
        })

    def fine_tune(self, model: ViT, steps: int, desc: str = "fine-tune", seed_offset: int = 0) -> dict:
        """Fine-tune ``model`` in place on the calibration data, distilling from the original model."""
        if steps == 0:
            return {"steps": 0, "final_loss": None, "losses": [], "seconds": 0.0}
        return fine_tune(model, self.calib_data, self.config.train_config(seed_offset), steps, teacher=self.teacher,
                         progress=self.progress, desc=desc)

    def report(self, model: ViT | None = None) -> dict:
        """JSON-ready report for ``model`` (default: the current one) against the original."""
        model = model or self.model
        before, after = self.teacher, model
        report = {
            "method": "nvit",
            "config": asdict(self.config),
            "target": {"measure": "flops" if self.config.target_flops is not None else "latency",
                       "ratio": self.target_ratio, "achieved_ratio": self.measure(after.spec) / self.base_cost},
            "dims": {"before": dims_summary(before.spec), "after": dims_summary(after.spec)},
            "params": _before_after(param_count(before), param_count(after)),
            "macs": _before_after(total_macs(before.spec), total_macs(after.spec)),
            "compaction_max_abs_diff": max((s["compaction_max_abs_diff"] for s in self.steps), default=0.0),
            "steps": self.steps,
        }
        if self.lut is not None:
            report["predicted_latency_ms"] = latency_summary(self.lut, before.spec, after.spec)
        return report

    def _loss(self, model: ViT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return training_loss(model, x, y, self.config.train_config(), self.teacher)

    def _require_reachable(self, ratio: float) -> None:
        smallest = self.measure(smallest_spec(self.model.spec, self.config.round_to)) / self.base_cost
        if smallest > ratio:
            what = "FLOPs" if self.config.target_flops is not None else "predicted latency"
            raise VitDeployError(f"the target ({ratio:.3g}× the original {what}) cannot be reached: with "
                                 f"--round-to {self.config.round_to} the smallest model pruning can make has "
                                 f"{smallest:.3g}×; choose a larger target or a smaller --round-to")


def prune_nvit(model: ViT, config: NViTConfig, calib_data, eval_data=None, lut: LatencyTable | None = None,
               progress: bool = True) -> tuple[ViT, dict]:
    """NViT-prune ``model`` to ``config``'s target; return the compacted dense ViT and a JSON-ready report.

    ``calib_data`` (a dataset of the model's inputs, e.g. a training split) feeds the importance
    estimates and every fine-tune; ``eval_data`` (optional) gives top-1 before, right after
    pruning, and after the final fine-tune. ``lut`` (or ``config.lut``) is a latency table for
    the latency term and latency targets. ``model`` itself is not changed.
    """
    with torch_threads(config.threads):
        return _prune_nvit(model, config, calib_data, eval_data, lut, progress)


def _prune_nvit(model: ViT, config: NViTConfig, calib_data, eval_data, lut: LatencyTable | None,
                progress: bool) -> tuple[ViT, dict]:
    started = time.perf_counter()
    if lut is None and config.lut:
        lut = load_table(config.lut)
    pruner = NViTPruner(model, config, calib_data, lut, progress)
    pruned = pruner.prune_to(pruner.target_ratio)
    prune_seconds = time.perf_counter() - started
    accuracy = {}
    if eval_data is not None:
        accuracy = {"before": evaluate(model, eval_data), "pruned": evaluate(pruned, eval_data)}
    final = pruner.fine_tune(pruned, config.final_finetune_steps, "final fine-tune", seed_offset=len(pruner.steps) + 1)
    if eval_data is not None:
        accuracy["after"] = evaluate(pruned, eval_data)
    report = pruner.report(pruned)
    report.update(accuracy={k: round(v, 4) for k, v in accuracy.items()}, final_finetune=final,
                  seconds={"prune": round(prune_seconds, 1), "total": round(time.perf_counter() - started, 1)})
    return pruned, report


# --- reporting ------------------------------------------------------------------------------------

def dims_summary(spec: ViTSpec) -> dict:
    """Embed dim and per-block heads / QK / V / MLP dims, for reports."""
    return {"embed_dim": spec.embed_dim,
            "blocks": [{"heads": b.heads, "qk_dim": b.qk_dim, "v_dim": b.v_dim, "mlp_dim": b.mlp_dim}
                       for b in spec.blocks]}


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def latency_summary(table: LatencyTable, before: ViTSpec, after: ViTSpec) -> dict:
    """Predicted latency before/after, its scope (whole model or blocks only) and any extrapolation."""
    include_fixed = StemGeometry.of(before) == table.stem
    old, new = predict(table, before, include_fixed), predict(table, after, include_fixed)
    return {**_before_after(old["total_ms"], new["total_ms"]), "scope": "model" if include_fixed else "blocks",
            "extrapolated": sorted(set(old["extrapolated"]) | set(new["extrapolated"]))}


def _before_after(before: float, after: float) -> dict:
    return {"before": before, "after": after, "ratio": after / before}


def _require_prunable(model: ViT) -> None:
    scored = [i + 1 for i, b in enumerate(model.spec.blocks) if b.tokens.scored]
    if scored:
        raise VitDeployError(f"blocks {scored} select tokens by attention score, which head pruning changes: "
                             "prune the structure first, then add the token plan")

"""What every static token method shares: the driver that applies a method's plan, FLOPs or
latency targets met by bisecting the method's knob, and the report.

Every method (in ``vitdeploy.prune.methods``) turns an unpruned model into the same model with a
token plan (weights unchanged, no fine-tuning). A FLOPs target (``target_flops``, a ratio of the
unpruned model's MACs) or a latency target (``target_latency_ms`` under the latency table ``lut``)
is met by bisecting the method's own knob: ρ for STAR, ε for Patch Slimming, the keep rate for
the baselines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
from tqdm import tqdm

from vitdeploy.data import batches
from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import EVAL_BATCH, evaluate
from vitdeploy.models.flops import block_macs, head_macs, patch_embed_macs, total_macs
from vitdeploy.models.spec import ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.prune.calibrate import require_dense_tokens
from vitdeploy.prune.costs import CostTarget, flops_target, latency_target
from vitdeploy.prune.registry import METHODS
from vitdeploy.prune.token_config import TokenTargets
from vitdeploy.models.token_plan import with_spec

BISECTION_STEPS = 30


class UnreachableTarget(VitDeployError):
    """A FLOPs or latency target below the cheapest plan of the method; ``lowest`` is that plan's cost."""

    def __init__(self, message: str, lowest: float):
        super().__init__(message)
        self.lowest = lowest


def prune_tokens(model: ViT, config: TokenTargets, calib_images: torch.Tensor | None,
                 eval_data=None, progress: bool = True, baseline_top1: float | None = None) -> tuple[ViT, dict]:
    """The model with the method's token plan, and a JSON-ready report (see the module docstring).

    With ``eval_data`` the report has both models' top-1; pass ``baseline_top1`` if already known.
    """
    config.validate()
    require_dense_tokens(model)
    if calib_images is None and METHODS.get(config.method).data is not None:
        raise VitDeployError(f"{config.method} calibrates on data: give --calib DATA")
    started = time.perf_counter()
    spec, details = METHODS.get(config.method).plan(model, config, calib_images, progress)
    pruned = with_spec(model, spec)
    report = {"method": config.method, "config": asdict(config),
              "calibration_seconds": round(time.perf_counter() - started, 2), **details,
              **plan_summary(model.spec, spec)}
    if eval_data is not None:
        report.update(accuracy_report(model, pruned, eval_data, baseline_top1))
    return pruned, report


def accuracy_report(model: ViT, pruned: ViT, eval_data, baseline_top1: float | None = None) -> dict:
    """Both models' top-1 on ``eval_data`` (the unpruned one's is measured unless given)."""
    top1 = baseline_top1 if baseline_top1 is not None else evaluate(model, eval_data)
    return {"baseline_top1": top1, **_accuracy(pruned, eval_data)}


def plan_summary(base: ViTSpec, spec: ViTSpec) -> dict:
    """Per-block patch-token counts and MACs of a plan against the unpruned spec."""
    base_macs, macs = total_macs(base), total_macs(spec)
    return {"patch_tokens_entering": spec.patch_tokens_entering(),
            "keep": [b.tokens.keep for b in spec.blocks],
            "macs": macs, "baseline_macs": base_macs, "flops_ratio": macs / base_macs}


def knob_or_target(value, make: Callable[[float], ViTSpec], config: TokenTargets, base: ViTSpec,
                   bounds: tuple[float, float], name: str, log: bool = False, increasing: bool = True,
                   steps: int = BISECTION_STEPS, progress: bool = False) -> tuple[float, ViTSpec]:
    """(knob, spec): the given knob, or the one that best meets ``config``'s FLOPs or latency target."""
    if value is not None:
        return value, make(value)
    return solve_knob(make, config_target(config, base), bounds, name, log, increasing, steps, progress)


def config_target(config: TokenTargets, base: ViTSpec) -> CostTarget:
    """The FLOPs target (a ratio of ``base``'s MACs) or the latency target under ``config.lut``."""
    if config.target_latency_ms is not None:
        return latency_target(config.target_latency_ms, config.lut, base)
    return flops_target(config.target_flops, base)


def solve_knob(make: Callable[[float], ViTSpec], target: CostTarget, bounds: tuple[float, float], name: str,
               log: bool = False, increasing: bool = True, steps: int = BISECTION_STEPS,
               progress: bool = False) -> tuple[float, ViTSpec]:
    """Bisect a knob whose cost is monotone in it; keep the costliest plan at or under the target.

    ``increasing``: the cost grows with the knob. An unreachable target raises ``UnreachableTarget``
    naming ``target.flag``, the option the user set it with.
    """
    lo, hi = (math.log(b) for b in bounds) if log else bounds
    to_knob = math.exp if log else float
    cheapest = to_knob(lo if increasing else hi)
    best = None
    for _ in tqdm(range(steps), desc=f"bisecting {name} for {target.describe(target.goal)}", disable=not progress,
                  leave=False):
        mid = (lo + hi) / 2
        spec = make(to_knob(mid))
        cost = target.cost(spec)
        if cost <= target.goal and (best is None or cost > best[2]):
            best = (to_knob(mid), spec, cost)
        if (cost <= target.goal) == increasing:
            lo = mid
        else:
            hi = mid
    if best is None:
        spec = make(cheapest)
        floor = target.cost(spec)
        if floor > target.goal:
            raise UnreachableTarget(f"{target.flag} {target.goal:g} cannot be reached: the lowest this method gives "
                                    f"is {target.describe(floor)} (at {name} = {cheapest:g})", floor)
        best = (cheapest, spec, floor)
    return best[0], best[1]


@torch.no_grad()
def _accuracy(pruned: ViT, dataset) -> dict:
    if not pruned.spec.adaptive:
        return {"top1": evaluate(pruned, dataset)}
    correct, macs = 0, []
    for x, y in batches(dataset, EVAL_BATCH):
        features, counts = pruned.forward_adaptive(x)
        correct += (pruned.classify(features).argmax(-1) == y).sum().item()
        macs += [_macs_at(pruned.spec, row) for row in counts.round().long().tolist()]
    mean_macs = sum(macs) / len(macs)
    return {"top1": correct / len(dataset), "adaptive_mean_macs": mean_macs,
            "adaptive_flops_ratio": mean_macs / total_macs(pruned.spec.with_token_plan({}))}


def _macs_at(spec: ViTSpec, patch_counts: list[int]) -> int:
    tokens = [spec.num_prefix_tokens + n for n in patch_counts]
    return patch_embed_macs(spec) + sum(b.total for b in block_macs(spec, tokens)) + head_macs(spec)


"""Static token plans from calibration data: Patch Slimming, STAR, a-STAR and the baselines.

Every method turns an unpruned model into the same model with a token plan (weights unchanged,
no fine-tuning). A FLOPs target (``target_flops``, a ratio of the unpruned model's MACs) is met
by bisecting the method's own knob: ρ for STAR, ε for Patch Slimming, the keep rate for the
baselines. Baselines:

- ``uniform``: after every block but the last, keep the same share of the tokens entering it,
  ranked by class attention;
- ``cls-attn``: EViT-style, class-attention top-k at a few blocks only, optionally folding the
  rest into a package token. EViT drops tokens inside layers 4, 7 and 10 of 12, between their
  attention and MLP; our steps sit at block ends, so the default is after blocks 3, 6 and 9
  (after ¼, ½ and ¾ of the depth);
- ``random``: the uniform schedule with random fixed positions (seeded).
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
from vitdeploy.models.spec import TokenStep, ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.prune import patch_slimming, star
from vitdeploy.prune.calibrate import require_dense_tokens
from vitdeploy.prune.token_config import CALIBRATED_METHODS, TokenPruneConfig
from vitdeploy.tokens.plan import Keep, keep_count, parse_keep, with_spec

BISECTION_STEPS = 30
EPSILON_BISECTION_STEPS = 16
"""Each ε step runs the whole top-down pass, so ε gets fewer (it spans 7 decades: ~0.4 % apart)."""
EPSILON_RANGE = (1e-6, 10.0)


def prune_tokens(model: ViT, config: TokenPruneConfig, calib_images: torch.Tensor | None,
                 eval_data=None, progress: bool = True, baseline_top1: float | None = None) -> tuple[ViT, dict]:
    """The model with the method's token plan, and a JSON-ready report (see the module docstring).

    With ``eval_data`` the report has both models' top-1; pass ``baseline_top1`` if already known.
    """
    config.validate()
    require_dense_tokens(model)
    if config.method in CALIBRATED_METHODS and calib_images is None:
        raise VitDeployError(f"--method {config.method} calibrates on data: give --calib DATA")
    started = time.perf_counter()
    spec, details = _plan(model, config, calib_images, progress)
    pruned = with_spec(model, spec)
    report = {"method": config.method, "config": asdict(config),
              "calibration_seconds": round(time.perf_counter() - started, 2), **details,
              **plan_summary(model.spec, spec)}
    if eval_data is not None:
        top1 = baseline_top1 if baseline_top1 is not None else evaluate(model, eval_data)
        report.update(baseline_top1=top1, **_accuracy(pruned, eval_data))
    return pruned, report


def plan_summary(base: ViTSpec, spec: ViTSpec) -> dict:
    """Per-block patch-token counts and MACs of a plan against the unpruned spec."""
    base_macs, macs = total_macs(base), total_macs(spec)
    return {"patch_tokens_entering": spec.patch_tokens_entering(),
            "keep": [b.tokens.keep for b in spec.blocks],
            "macs": macs, "baseline_macs": base_macs, "flops_ratio": macs / base_macs}


def _plan(model: ViT, config: TokenPruneConfig, images, progress: bool) -> tuple[ViTSpec, dict]:
    spec = model.spec
    if config.method in ("star", "a-star"):
        stats = star.calibrate(model, images, config.gamma, config.rounds, config.calib_batch, config.seed, progress)

        def make(rho: float) -> ViTSpec:
            return star.star_spec(spec, stats, rho, config.alpha, adaptive=config.method == "a-star")

        rho, plan = _knob(config.rho, make, config.target_flops, spec, (1e-4, 1.0), "ρ")
        return plan, {"rho": rho, "keep_rates": star.keep_rates(stats.acs, rho), "star": stats.to_dict()}
    if config.method == "patch-slimming":
        calib = patch_slimming.SlimmingCalibration(model, images)
        per_layer_bar = progress and config.epsilon is not None  # else the bisection has the bar

        def make(eps: float) -> ViTSpec:
            plan = patch_slimming.slimming_plan(calib, eps, config.granularity, progress=per_layer_bar)
            return patch_slimming.slimming_spec(spec, plan)

        eps, plan = _knob(config.epsilon, make, config.target_flops, spec, EPSILON_RANGE, "ε", log=True,
                          increasing=False, steps=EPSILON_BISECTION_STEPS, progress=progress)
        return plan, {"epsilon": eps}
    if config.keep is not None:
        return _baseline_from_keep(spec, config), {}
    rate, plan = _knob(config.rate, lambda r: _baseline_spec(spec, config, r), config.target_flops, spec,
                       (1e-3, 0.999), "rate")
    return plan, {"rate": rate}


def _knob(value, make: Callable[[float], ViTSpec], target: float | None, base: ViTSpec, bounds: tuple[float, float],
          name: str, log: bool = False, increasing: bool = True, steps: int = BISECTION_STEPS,
          progress: bool = False) -> tuple[float, ViTSpec]:
    """(knob, spec): the given knob, or the one whose FLOPs ratio is the largest not above ``target``."""
    if value is not None:
        return value, make(value)
    return solve_for_flops(make, target, total_macs(base), bounds, name, log, increasing, steps, progress)


def solve_for_flops(make: Callable[[float], ViTSpec], target: float, base_macs: int, bounds: tuple[float, float],
                    name: str, log: bool = False, increasing: bool = True, steps: int = BISECTION_STEPS,
                    progress: bool = False, flag: str = "--target-flops") -> tuple[float, ViTSpec]:
    """Bisect a knob whose FLOPs ratio is monotone in it; keep the best plan at or under ``target``.

    An unreachable target raises ``VitDeployError`` naming ``flag``, the option the user set it with.
    """
    lo, hi = (math.log(b) for b in bounds) if log else bounds
    to_knob = math.exp if log else float
    cheapest = to_knob(lo if increasing else hi)
    best = None
    for _ in tqdm(range(steps), desc=f"bisecting {name} for {target:g}× FLOPs", disable=not progress, leave=False):
        mid = (lo + hi) / 2
        spec = make(to_knob(mid))
        ratio = total_macs(spec) / base_macs
        if ratio <= target and (best is None or ratio > best[2]):
            best = (to_knob(mid), spec, ratio)
        if (ratio <= target) == increasing:
            lo = mid
        else:
            hi = mid
    if best is None:
        spec = make(cheapest)
        floor = total_macs(spec) / base_macs
        if floor > target:
            raise VitDeployError(f"{flag} {target:g} cannot be reached: the fewest FLOPs this method gives "
                                 f"is {floor:.3f}× (at {name} = {cheapest:g})")
        best = (cheapest, spec, floor)
    return best[0], best[1]


def _baseline_steps(spec: ViTSpec, config: TokenPruneConfig) -> list[int]:
    """0-based blocks that drop tokens: every block but the last, or cls-attn's few."""
    if config.method != "cls-attn":
        return list(range(spec.depth - 1))
    if config.blocks is None:  # EViT drops inside layers L/4+1, L/2+1, 3L/4+1: our steps end the block before
        return sorted({min(spec.depth - 2, max(0, round(i * spec.depth / 4) - 1)) for i in (1, 2, 3)})
    try:
        blocks = sorted({int(b) - 1 for b in config.blocks.split(",") if b.strip()})
    except ValueError:
        raise VitDeployError(f"--blocks {config.blocks!r}: give block numbers such as 4,7,10") from None
    if not blocks or blocks[0] < 0 or blocks[-1] > spec.depth - 2:
        raise VitDeployError(f"--blocks {config.blocks!r}: blocks must be in 1..{spec.depth - 1} (not the last)")
    return blocks


def _baseline_spec(spec: ViTSpec, config: TokenPruneConfig, rate: float) -> ViTSpec:
    return _baseline_plan(spec, config, {b: rate for b in _baseline_steps(spec, config)})


def _baseline_from_keep(spec: ViTSpec, config: TokenPruneConfig) -> ViTSpec:
    return _baseline_plan(spec, config, parse_keep(config.keep))


def _baseline_plan(spec: ViTSpec, config: TokenPruneConfig, plan: dict[int, Keep]) -> ViTSpec:
    """Class-attention steps (or random fixed positions); a rate that would keep every token
    left (down to one) adds no step, while an explicit count above the tokens is an error."""
    generator = torch.Generator().manual_seed(config.seed)
    steps, n = {}, spec.num_patches
    for index in sorted(plan):
        keep = keep_count(plan[index], n)
        if isinstance(plan[index], float) and keep >= n:
            continue
        if config.method == "random":
            positions = torch.randperm(n, generator=generator)[:keep].sort().values.tolist()
            steps[index] = TokenStep(keep=keep, selector="fixed", positions=positions)
        else:
            steps[index] = TokenStep(keep=keep, selector="cls_attn", package=config.package)
        n = keep
    return spec.with_token_plan(steps)


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


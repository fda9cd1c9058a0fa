"""SPViT soft token pruning (Kong et al., "SPViT: Enabling Faster Vision Transformers via Soft
Token Pruning"): learned multi-head token selectors, package tokens, computation-aware training,
and a static model for export.

**The model.** A selector (``vitdeploy.tokens.spvit.SPViTSelector``) sits after each chosen block
and gives every patch token a keep probability T. The returned model is a plain ``ViT`` whose spec
has ``spvit`` token steps: at inference each step keeps a static ``k_i = round(ρ_i·N)`` patch
tokens by top-k of T (the class token is always kept) and folds the dropped ones into a package
token ``P = Σ n_i·m_i / Σ m_i`` (token n_i, score m_i = T_i). Every shape is static, so the model
exports like any other token plan. The per-image adaptive token count of the paper exists only
while training and in ``adaptive_evaluate`` (PyTorch): an exported graph always keeps k_i tokens.

**Keep targets ρ_i.** ρ_i is the share of the N patch tokens still alive after selector i. The
budget (a ratio of the unpruned MACs, their Eq. 9/10 via our analytic ``total_macs``, which counts
the selectors and package tokens too) fixes a geometric schedule ρ_i = r^i: r is bisected so that
the static model's MACs are the largest not above the budget, and ρ_i = k_i / N after rounding.
(Targets from a measured latency table, which the issue allows as an alternative, are not
implemented: the budget is in FLOPs only.)

**Training** (all N tokens stay in the tensors; dropped ones are masked, never gathered):

- decisions: ``D' = GumbelSoftmax(log T, log(1−T))`` with hard straight-through samples, multiplied
  across selectors (``D ← D ⊙ D'``);
- attention: DynamicViT's masked softmax, ``A_ij = exp(l_ij)·G_ij / Σ_k exp(l_ik)·G_ik`` with
  ``G_ij = D_j`` (and 1 on the diagonal, so a dropped query stays finite): dropped tokens are no
  keys for anyone, and gradients reach T through D;
- package token: the same formula as inference over the tokens dropped at this step, weights
  ``T_i·D_i·(1−D'_i)``; added to or concatenated with earlier ones as the spec says;
- loss: ``L = L_cls + λ_KL·KL(teacher ‖ student) + λ_distill·L_distill + λ_ratio·Σ_i (ρ_i − mean_b keep_i)²``
  with the unpruned model as teacher (KL at temperature 1). The paper leaves ``L_distill``
  undefined; its weights are DynamicViT's, so we take DynamicViT's token distillation: the mean
  squared error between the student's and the teacher's final (normed) patch-token features,
  over the tokens the student still keeps after the last selector. ``keep_i`` is the share of
  the N patch tokens alive after selector i in one image, averaged over the batch (not divided
  by the number of selectors, as DynamicViT's code does: the issue's and the paper's Σ_i);
- AdamW with separate learning rates for the selectors and the backbone, cosine decay to 0 over
  ``epochs`` (so extending a finished run to more epochs re-spaces the remaining schedule);
  random horizontal flips (and ``crop_padding`` shifts) as augmentation.

Each epoch ends with an evaluation of the *static* model (top-k + package); the best epoch is
kept and returned. After every epoch the run is checkpointed atomically to the output directory
(model, optimizer, RNG, history, best model), so an interrupted run resumes where it stopped.
The optimizer, schedule, epoch loop and checkpoints are the shared ``vitdeploy.train.trainer``.

**Deviation: no layer-to-phase progressive training.** The paper inserts a selector after every
block, one at a time from the last block down, raising each one's pruning rate until accuracy
drops, then merges similar neighbours into phases. That search costs about one training run per
block. We train the final phase layout directly: selectors after the configured blocks (the
paper's own outcome for DeiT is three phases at ¼, ½ and ¾ of the depth, our default), all trained
jointly from the start, with keep targets from the geometric schedule above.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from vitdeploy.data import batches
from vitdeploy.evaluate import EVAL_BATCH, evaluate
from vitdeploy import runtime
from vitdeploy.data.loader import CropFlip
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.models.spec import TokenStep, ViTSpec
from vitdeploy.models.vit import Block, ViT
from vitdeploy.prune.calibrate import require_dense_tokens
from vitdeploy.prune.methods.spvit.config import SPViTConfig
from vitdeploy.prune.costs import flops_target
from vitdeploy.prune.token_methods import plan_summary, solve_knob
from vitdeploy.threads import torch_threads
from vitdeploy.tokens.spvit import SPViTSelector
from vitdeploy.train.loop import distillation_loss
from vitdeploy.train.trainer import (
    Checkpoint,
    EpochPlan,
    EpochResult,
    RunState,
    Schedule,
    StepLoss,
    Trainer,
    param_groups,
    run_epochs,
)

CHECKPOINT_FILE, BEST_DIR = "checkpoint.pt", "best"
MASK_EPS = 1e-6
PACKAGE_FLOOR = 1e-2
PROB_FLOOR = 1e-8
RATE_BOUNDS = (1e-3, 0.999)
ADAPTIVE_NOTE = ("adaptive_* figures keep each image's own token count (T > 0.5): a PyTorch-only evaluation "
                 "of the trained selectors; the static model and its export keep k_i tokens per step")

Decide = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(keep probabilities T (B, N), alive (B, N) of 0/1) → this step's keep decisions D' (B, N)."""


# --- keep targets from the FLOPs budget -------------------------------------------------------

def static_plan(spec: ViTSpec, config: SPViTConfig) -> tuple[ViTSpec, list[float]]:
    """The static inference spec meeting ``config.budget_flops`` and its keep targets ρ_i = k_i / N."""
    blocks = config.selector_blocks(spec.depth)
    make = lambda rate: spvit_spec(spec, {b: rate ** (i + 1) for i, b in enumerate(blocks)}, config)
    target = flops_target(config.budget_flops, spec, flag="--budget-flops")
    _, plan = solve_knob(make, target, RATE_BOUNDS, "the keep-rate schedule")
    return plan, [plan.blocks[b].tokens.keep / spec.num_patches for b in blocks]


def spvit_spec(spec: ViTSpec, ratios: dict[int, float], config: SPViTConfig) -> ViTSpec:
    """``spec`` with SPViT steps after the given blocks (0-based → ρ, a share of all N patches),
    keeping ``round(ρ·N)`` tokens: fewer than the tokens entering, and enough to leave every later
    step one token to drop."""
    steps, n = {}, spec.num_patches
    for later, index in enumerate(sorted(ratios), start=1 - len(ratios)):
        n = min(n - 1, max(1 - later, round(ratios[index] * spec.num_patches)))
        steps[index] = TokenStep(keep=n, selector="spvit", package=config.package,
                                 package_mode=config.package_mode if config.package else "concat",
                                 selector_heads=config.selector_heads)
    return spec.with_token_plan(steps)


def student_from(model: ViT, spec: ViTSpec, seed: int) -> ViT:
    """A model of ``spec`` with ``model``'s weights and freshly initialised (seeded) selectors.

    Selectors get PyTorch's default Linear/LayerNorm init, not the ViT's std-0.02 init: with that,
    every token's T is the same to float precision, so top-k picks among exact ties and the
    selectors' gradients start out vanishingly small.
    """
    student = ViT(spec)
    missing, unexpected = student.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(".selector." not in key for key in missing):
        raise RuntimeError(f"backbone weights do not fit the SPViT spec: missing {missing}, unexpected {unexpected}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in student.modules():
            if isinstance(module, SPViTSelector):
                for layer in module.modules():
                    if isinstance(layer, (nn.Linear, nn.LayerNorm)):
                        layer.reset_parameters()
    return student


# --- the training-time forward pass -----------------------------------------------------------

@dataclass
class SoftOutput:
    logits: torch.Tensor
    patch_features: torch.Tensor
    """Final (normed) features at all N patch positions, (B, N, C); dead positions are stale."""
    decision: torch.Tensor
    """Which patch tokens survive every selector, (B, N) of 0/1 (straight-through when trained)."""
    keep_fractions: list[torch.Tensor]
    """Per selector, the share of the N patch tokens alive after it, per image (B,)."""


def soft_forward(model: ViT, images: torch.Tensor, decide: Decide) -> SoftOutput:
    """``model`` (a ViT with spvit steps) with keep decisions as attention masks instead of
    gathers; ``decide`` gives each step's decisions (``gumbel_decisions`` when training)."""
    x = model.embed(images)
    batch, prefix, n = x.shape[0], model.spec.num_prefix_tokens, model.spec.num_patches
    ones = x.new_ones(batch, prefix)
    decision = x.new_ones(batch, n)
    packages = x[:, :0]
    keep_fractions = []
    for block in model.blocks:
        policy = torch.cat([ones, decision, ones[:, :1].expand(-1, packages.shape[1])], dim=1)
        tokens = masked_block(block, torch.cat([x, packages], dim=1), policy)
        x, packages = tokens[:, : prefix + n], tokens[:, prefix + n:]
        if block.selector is not None:
            decision, packages = _soft_step(block, x[:, prefix:], decision, packages, decide)
            keep_fractions.append(decision.mean(dim=1))
    features = model.norm(torch.cat([x, packages], dim=1))
    return SoftOutput(model.classify(features), features[:, prefix: prefix + n], decision, keep_fractions)


def _soft_step(block: Block, patches: torch.Tensor, decision: torch.Tensor, packages: torch.Tensor,
               decide: Decide) -> tuple[torch.Tensor, torch.Tensor]:
    keep_prob = block.selector(patches, alive=decision)
    kept = decision * decide(keep_prob, decision)
    if block.step.package:
        # weights T_i·D_i·(1 − D_i·D'_i): the tokens alive until now that this step drops
        packages = block._with_package(packages, soft_package(patches, keep_prob * decision * (1.0 - kept)))
    return kept, packages


def soft_package(patches: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The training-time package token ``Σ w_i·n_i / max(Σ w_i, PACKAGE_FLOOR)``, (B, 1, C).

    Inference (``select.package_token``) always drops at least one token; a sampled step may drop
    none, or only tokens with T ≈ 0, and then ∂P/∂w_i = (n_i − P)/Σ w explodes (to 1e11 and more
    with the inference's 1e-12 floor). The floor bounds it; the forward pass differs from
    inference's only when the dropped tokens' scores sum to less than the floor.
    """
    w = weights.unsqueeze(-1)
    return (w * patches).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(PACKAGE_FLOOR)


def masked_block(block: Block, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """``block`` (without its token step) on all tokens, keys weighted by ``policy`` (B, N)."""
    return block.residual(x, lambda h: block.attn.explicit(h, lambda logits: masked_softmax(logits, policy)))[0]


def masked_softmax(logits: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """DynamicViT's differentiable masked softmax over the last axis of (B, H, N, N) logits:
    ``exp(l_ij)·G_ij / Σ_k exp(l_ik)·G_ik`` with ``G_ij = policy_j``, and 1 on the diagonal.

    Unlike DynamicViT, the logits are shifted by the largest *kept* logit of each row, and a
    dropped key's exponent is capped at 0. The forward pass is then exact however small the kept
    keys' share would be under a shift by the overall maximum, and the gradient reaching a dropped
    key's gate stays bounded: uncapped, a dropped key whose logit exceeds every kept one by a
    margin m would receive a gradient ∝ e^m.
    """
    n = policy.shape[1]
    gate = policy[:, None, None, :]
    eye = torch.eye(n, dtype=logits.dtype, device=logits.device)
    gate = gate + (1.0 - gate) * eye
    shift = logits.masked_fill(gate == 0, float("-inf")).amax(dim=-1, keepdim=True).detach()
    weights = (logits - shift).clamp_max(0.0).exp() * gate
    return (weights + MASK_EPS / n) / (weights.sum(dim=-1, keepdim=True) + MASK_EPS)


def gumbel_decisions(tau: float, generator: torch.Generator) -> Decide:
    """Hard keep decisions sampled by Gumbel-softmax over (log T, log(1−T)) at temperature ``tau``,
    with straight-through gradients (forward 0/1, backward the soft sample's)."""
    def decide(keep_prob: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([keep_prob, 1.0 - keep_prob], dim=-1).clamp_min(PROB_FLOOR).log()
        uniform = torch.rand(logits.shape, generator=generator).to(logits.device).clamp(PROB_FLOOR, 1.0 - PROB_FLOOR)
        soft = torch.softmax((logits - (-uniform.log()).log()) / tau, dim=-1)[..., 0]
        hard = (soft > 0.5).to(soft.dtype)
        return hard + (soft - soft.detach())

    return decide


def threshold_decisions(keep_prob: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """The deterministic per-image decision: keep a token when T > 0.5."""
    return (keep_prob > 0.5).to(keep_prob.dtype)


# --- the loss ---------------------------------------------------------------------------------

def spvit_loss(out: SoftOutput, labels: torch.Tensor, teacher_logits: torch.Tensor,
               teacher_patches: torch.Tensor, targets: list[float], config: SPViTConfig) -> tuple[torch.Tensor, dict]:
    """``L_cls + λ_KL·KL + λ_distill·L_distill + λ_ratio·L_ratio`` and its parts (floats)."""
    parts = {
        "cls": F.cross_entropy(out.logits, labels),
        "kl": distillation_loss(out.logits, teacher_logits, 1.0),
        "distill": token_distillation(out.patch_features, teacher_patches, out.decision),
        "ratio": sum((rho - kept.mean()) ** 2 for rho, kept in zip(targets, out.keep_fractions)),
    }
    loss = (parts["cls"] + config.lambda_kl * parts["kl"] + config.lambda_distill * parts["distill"]
            + config.lambda_ratio * parts["ratio"])
    return loss, {name: value.item() for name, value in parts.items()}


def token_distillation(student: torch.Tensor, teacher: torch.Tensor, decision: torch.Tensor) -> torch.Tensor:
    """Mean squared error of (B, N, C) patch features over the tokens kept to the end."""
    kept = (decision.detach() > 0.5).to(student.dtype).unsqueeze(-1)
    count = kept.sum() * student.shape[-1]
    return ((student - teacher) ** 2 * kept).sum() / count.clamp_min(1.0)


# --- evaluation -------------------------------------------------------------------------------

@torch.no_grad()
def adaptive_evaluate(model: ViT, dataset) -> dict:
    """Top-1 and mean keep share per selector with per-image decisions (T > 0.5), in PyTorch."""
    rt = runtime.current()
    model.eval()
    correct, seen, kept = 0, 0, None
    with rt.on_device(model):
        for x, y in batches(dataset, EVAL_BATCH):
            x, y = rt.to_device(x, torch.as_tensor(y))
            out = soft_forward(model, x, threshold_decisions)
            correct += (out.logits.argmax(-1) == y).sum().item()
            seen += len(y)
            sums = [f.sum().item() for f in out.keep_fractions]
            kept = sums if kept is None else [a + b for a, b in zip(kept, sums)]
    return {"adaptive_top1": correct / seen, "adaptive_keep": [k / seen for k in kept]}


@torch.no_grad()
def score_spreads(model: ViT, dataset) -> list[float]:
    """Per selector, the median over one batch of ``dataset`` of the spread (std across tokens) of
    the logits it ranks by (on the masked path, ``threshold_decisions``). A spread near 0 means the
    selector scores every token alike: its top-k is then decided by rounding, and PyTorch and ONNX
    Runtime disagree."""
    model.eval()
    logits = []

    def capture(selector, args, kwargs, _):
        logits.append(selector.keep_logit(*args, **kwargs))

    hooks = [block.selector.register_forward_hook(capture, with_kwargs=True)
             for block in model.blocks if block.selector is not None]
    try:
        soft_forward(model, next(iter(batches(dataset, EVAL_BATCH)))[0], threshold_decisions)
    finally:
        for hook in hooks:
            hook.remove()
    return [scores.std(dim=1).median().item() for scores in logits]


# --- training ---------------------------------------------------------------------------------

def prune_spvit(model: ViT, config: SPViTConfig, train_data, eval_data, out_dir: str | Path,
                progress: bool = True) -> tuple[ViT, dict]:
    """Train SPViT selectors (and fine-tune the backbone) on ``model``; return the static inference
    model of the best epoch (by ``eval_data`` top-1) and a JSON-ready report.

    ``out_dir`` holds ``checkpoint.pt`` (resumable state) and ``best/`` (the best static model as
    an artifact); with ``config.resume`` a run continues from the checkpoint it finds there.
    """
    config.validate(model.spec.depth)
    require_dense_tokens(model)
    with torch_threads(config.threads):
        return _prune_spvit(model, config, train_data, eval_data, Path(out_dir), progress)


def _prune_spvit(model: ViT, config: SPViTConfig, train_data, eval_data, out_dir: Path,
                 progress: bool) -> tuple[ViT, dict]:
    spec, targets = static_plan(model.spec, config)
    student = student_from(model, spec, config.seed)
    train_data = _first(train_data, config.limit)
    schedule = Schedule(config.epochs * math.ceil(len(train_data) / config.batch_size))
    teacher = _frozen(model)
    trainer = Trainer(student, _param_groups(student, config), schedule, config.seed, CropFlip(config.crop_padding),
                      companions=(teacher,))
    checkpoint = Checkpoint(out_dir / CHECKPOINT_FILE, _identity(config, spec), "SPViT")
    state = checkpoint.resume(trainer) if config.resume else RunState()
    resumed_from = state.epochs_done

    def finish(epoch: EpochResult) -> dict:
        return {"epoch": epoch.epoch, "top1": evaluate(student, eval_data), **adaptive_evaluate(student, eval_data),
                "train_loss": _mean_parts(epoch.steps), "seconds": round(time.perf_counter() - epoch.started, 1)}

    def save_best(state: RunState) -> None:
        summary = {"method": "spvit", "config": asdict(config), "best_epoch": state.best_epoch,
                   "best_top1": state.best_score, **plan_summary(model.spec, spec)}
        save_artifact(student, out_dir / BEST_DIR, reports={"prune.json": summary})

    plan = EpochPlan(train_data, config.epochs, config.batch_size, config.seed, finish, desc="spvit epoch",
                     best_key="top1", on_best=save_best, describe=_epoch_line(config),
                     postfix=lambda r: {"loss": f"{r['loss']:.3f}", "keep": f"{r['keep_last']:.2f}"})
    started = time.perf_counter()
    run_epochs(trainer, plan, _step_loss(student, teacher, targets, config, trainer.generator), state,
               checkpoint, progress)
    student.load_state_dict(state.best_state)
    student.eval()
    report = _report(state, config, spec, model.spec, targets, resumed_from, time.perf_counter() - started)
    for phase, spread in zip(report["phases"], score_spreads(student, eval_data)):
        phase["score_spread"] = spread
    report["teacher_top1"] = evaluate(model, eval_data)
    return student, report


def _step_loss(student: ViT, teacher: ViT, targets: list[float], config: SPViTConfig,
               generator: torch.Generator) -> StepLoss:
    """SPViT's loss on an (augmented) batch, with the Gumbel decisions drawn from ``generator``."""
    prefix = teacher.spec.num_prefix_tokens

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            teacher_features = teacher.forward_features(x)
            teacher_logits = teacher.classify(teacher_features)
        out = soft_forward(student, x, gumbel_decisions(config.gumbel_tau, generator))
        total, parts = spvit_loss(out, y, teacher_logits, teacher_features[:, prefix:], targets, config)
        return total, {**parts, "keep_last": out.keep_fractions[-1].mean().item()}

    return loss


def _param_groups(student: ViT, config: SPViTConfig) -> list[dict]:
    """The usual weight-decay groups, each split into selector and backbone parameters (own peak lrs)."""
    selector_params = {id(p) for block in student.blocks if block.selector is not None
                       for p in block.selector.parameters()}
    groups = []
    for group in param_groups(student, config.weight_decay):
        for is_selector, lr in ((True, config.lr_selector), (False, config.lr_backbone)):
            params = [p for p in group["params"] if (id(p) in selector_params) == is_selector]
            if params:
                groups.append({"params": params, "weight_decay": group["weight_decay"], "lr": lr,
                               "selector": is_selector})
    return groups


def _epoch_line(config: SPViTConfig) -> Callable[[dict], str]:
    return lambda r: (f"spvit epoch {r['epoch']}/{config.epochs}: static top-1 {r['top1']:.4f}, "
                      f"adaptive {r['adaptive_top1']:.4f}")


def _identity(config: SPViTConfig, spec: ViTSpec) -> dict:
    """What a checkpoint must match to be resumed: the run's settings and the static spec (plain data)."""
    return json.loads(json.dumps({"config": config.run_identity(), "spec": spec.to_dict()}))


def _report(state: RunState, config: SPViTConfig, spec: ViTSpec, base: ViTSpec, targets: list[float],
            resumed_from: int, seconds: float) -> dict:
    blocks = config.selector_blocks(base.depth)
    best = next(r for r in state.history if r["epoch"] == state.best_epoch)
    return {
        "method": "spvit", "config": asdict(config), "selectors": [b + 1 for b in blocks],
        "keep_ratio_targets": targets,
        "phases": [{"after_block": b + 1, "keep": spec.blocks[b].tokens.keep, "rho": rho,
                    "adaptive_keep": kept} for b, rho, kept in zip(blocks, targets, best["adaptive_keep"])],
        **plan_summary(base, spec), "history": state.history, "best_epoch": state.best_epoch,
        "top1": state.best_score, "resumed_from_epoch": resumed_from, "train_seconds": round(seconds, 1),
        "note": ADAPTIVE_NOTE,
    }


def _mean_parts(losses: list[dict]) -> dict:
    return {name: sum(d[name] for d in losses) / len(losses) for name in losses[0]} if losses else {}


def _frozen(model: ViT) -> ViT:
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def _first(dataset, limit: int | None):
    return Subset(dataset, range(limit)) if limit is not None and len(dataset) > limit else dataset

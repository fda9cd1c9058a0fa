"""Training a ViT (from scratch, or from ``--init`` weights) with per-epoch test accuracy, and
fine-tuning for a fixed number of steps, optionally distilling from a teacher's logits.

AdamW with linear warm-up then cosine decay, label smoothing, and random shift/flip
augmentation, run by the shared engine (``vitdeploy.train.trainer``). With the same seed, thread
count and torch build, runs are repeatable.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import asdict

import torch
import torch.nn.functional as F

from vitdeploy.data import dataset_for
from vitdeploy.data.loader import EpochBatches, batch_augment_for
from vitdeploy.data.pipeline import Pipeline
from vitdeploy.evaluate import evaluate
from vitdeploy.models.vit import ViT
from vitdeploy.threads import torch_threads
from vitdeploy.train.config import TrainConfig
from vitdeploy.train.trainer import EpochPlan, EpochResult, Schedule, StepLoss, Trainer, param_groups, run_epochs


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)), averaged over the batch (Hinton et al.)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.log_softmax(teacher_logits / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature**2


def training_loss(model: ViT, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                  teacher: ViT | None = None) -> torch.Tensor:
    """Cross-entropy (against labels, or soft targets already smoothed), plus ``distill_weight`` × the
    distillation loss when a teacher is given."""
    logits = model(x)
    smoothing = 0.0 if y.is_floating_point() else config.label_smoothing
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    if teacher is None:
        return loss
    with torch.no_grad():
        teacher_logits = teacher(x)
    return loss + config.distill_weight * distillation_loss(logits, teacher_logits, config.distill_temperature)


def train(model: ViT, config: TrainConfig, progress: bool = True, teacher: ViT | None = None,
          pipeline: Pipeline | None = None) -> dict:
    """Train ``model`` in place; return a JSON-ready report with per-epoch test accuracy. ``pipeline``
    prepares image-folder training data (default: the evaluation transform, no workers)."""
    config.validate()
    with torch_threads(config.threads), _seeded(config.seed):
        train_set = dataset_for(model, config.data, "train", config.limit, pipeline=pipeline)
        test_set = dataset_for(model, config.data, "test", config.limit)
        steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
        schedule = Schedule(config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch))

        def finish(epoch: EpochResult) -> dict:
            return {"epoch": epoch.epoch, "test_top1": evaluate(model, test_set), "loss": epoch.steps[-1]["loss"]}

        plan = EpochPlan(train_set, config.epochs, config.batch_size, config.seed, finish,
                         describe=lambda r: f"epoch {r['epoch']}/{config.epochs}: test top-1 {r['test_top1']:.4f}")
        started = time.perf_counter()
        history = run_epochs(_trainer(model, train_set, config, schedule, teacher), plan, _loss(model, config, teacher),
                             progress=progress).history
    model.eval()
    return {"config": asdict(config), "pipeline": asdict(pipeline) if pipeline else None, "history": history,
            "test_top1": history[-1]["test_top1"], "train_seconds": round(time.perf_counter() - started, 1)}


def fine_tune(model: ViT, train_set, config: TrainConfig, steps: int, teacher: ViT | None = None,
              progress: bool = False, desc: str = "fine-tune") -> dict:
    """Run exactly ``steps`` optimizer steps on ``train_set`` in place, without evaluating.

    The data is cycled (reshuffled every pass); the warm-up (``config.warmup_epochs`` passes)
    and cosine schedule span the ``steps``; ``config.epochs`` and ``config.limit`` are ignored.
    With a ``teacher``, the loss adds the distillation term (see ``training_loss``).
    """
    config.validate()
    with torch_threads(config.threads), _seeded(config.seed):
        steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
        schedule = Schedule(steps, min(int(config.warmup_epochs * steps_per_epoch), steps))
        started = time.perf_counter()
        data = EpochBatches(train_set, config.batch_size, config.seed).endless()
        results = _trainer(model, train_set, config, schedule, teacher).run_steps(
            data, steps, _loss(model, config, teacher), desc, progress)
    model.eval()
    losses = [r["loss"] for r in results]
    tail = losses[-min(len(losses), 20):]
    return {"steps": steps, "final_loss": sum(tail) / len(tail) if tail else None, "losses": losses,
            "seconds": round(time.perf_counter() - started, 1)}


def _trainer(model: ViT, train_set, config: TrainConfig, schedule: Schedule, teacher: ViT | None) -> Trainer:
    groups = [{**group, "lr": config.lr, "min_lr": config.min_lr} for group in param_groups(model, config.weight_decay)]
    augment = batch_augment_for(train_set, model.spec.num_classes, config.crop_padding)
    return Trainer(model, groups, schedule, config.seed, augment, companions=(teacher,) if teacher else ())


def _loss(model: ViT, config: TrainConfig, teacher: ViT | None) -> StepLoss:
    return lambda x, y: (training_loss(model, x, y, config, teacher), {})


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Torch's global RNG seeded for the span of a run, and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

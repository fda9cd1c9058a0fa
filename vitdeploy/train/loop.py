"""Training a ViT (from scratch, or from ``--init`` weights) with per-epoch test accuracy, and
fine-tuning for a fixed number of steps, optionally distilling from a teacher's logits.

AdamW with linear warm-up then cosine decay, label smoothing, and random shift/flip
augmentation. With the same seed, thread count and torch build, runs are repeatable.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitdeploy.data import batches, random_crop_flip
from vitdeploy.evaluate import dataset_for, evaluate
from vitdeploy.models.vit import ViT
from vitdeploy.train.config import TrainConfig


def lr_at(step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float:
    if step < warmup_steps:
        return config.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: ViT, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, the class token or position embedding."""
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if param.ndim >= 2 and param.shape[0] > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)), averaged over the batch (Hinton et al.)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.log_softmax(teacher_logits / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature**2


def training_loss(model: ViT, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                  teacher: ViT | None = None) -> torch.Tensor:
    """Cross-entropy, plus ``distill_weight`` × the distillation loss when a teacher is given."""
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
    if teacher is None:
        return loss
    with torch.no_grad():
        teacher_logits = teacher(x)
    return loss + config.distill_weight * distillation_loss(logits, teacher_logits, config.distill_temperature)


def train(model: ViT, config: TrainConfig, progress: bool = True, teacher: ViT | None = None) -> dict:
    """Train ``model`` in place; return a JSON-ready report with per-epoch test accuracy."""
    config.validate()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    train_set = dataset_for(model, config.data, "train", config.limit)
    test_set = dataset_for(model, config.data, "test", config.limit)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps, warmup_steps = config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    history, step, started = [], 0, time.perf_counter()
    for epoch in range(config.epochs):
        bar = tqdm(batches(train_set, config.batch_size, shuffle=True, seed=config.seed + epoch),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for x, y in bar:
            loss = _train_step(model, optimizer, x, y, lr_at(step, total_steps, warmup_steps, config), config,
                               generator, teacher)
            step += 1
            bar.set_postfix(loss=f"{loss:.3f}")
        top1 = evaluate(model, test_set)
        history.append({"epoch": epoch + 1, "test_top1": top1, "loss": loss})
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: test top-1 {top1:.4f}", file=sys.stderr)
    model.eval()
    return {"config": asdict(config), "history": history, "test_top1": history[-1]["test_top1"],
            "train_seconds": round(time.perf_counter() - started, 1)}


def fine_tune(model: ViT, train_set, config: TrainConfig, steps: int, teacher: ViT | None = None,
              progress: bool = False, desc: str = "fine-tune") -> dict:
    """Run exactly ``steps`` optimizer steps on ``train_set`` in place, without evaluating.

    The data is cycled (reshuffled every pass); the warm-up (``config.warmup_epochs`` passes)
    and cosine schedule span the ``steps``; ``config.epochs`` and ``config.limit`` are ignored.
    With a ``teacher``, the loss adds the distillation term (see ``training_loss``).
    """
    config.validate()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), steps)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    started, losses = time.perf_counter(), []
    bar = tqdm(itertools.islice(_endless_batches(train_set, config), steps), total=steps, desc=desc,
               disable=not progress, leave=False)
    for step, (x, y) in enumerate(bar):
        losses.append(_train_step(model, optimizer, x, y, lr_at(step, steps, warmup_steps, config), config,
                                  generator, teacher))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    tail = losses[-min(len(losses), 20):]
    return {"steps": steps, "final_loss": sum(tail) / len(tail) if tail else None,
            "seconds": round(time.perf_counter() - started, 1)}


def _train_step(model: ViT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float,
                config: TrainConfig, generator: torch.Generator, teacher: ViT | None) -> float:
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = training_loss(model, random_crop_flip(x, config.crop_padding, generator), y, config, teacher)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _endless_batches(train_set, config: TrainConfig) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for epoch in itertools.count():
        yield from batches(train_set, config.batch_size, shuffle=True, seed=config.seed + epoch)


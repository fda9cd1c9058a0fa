"""Training a ViT (from scratch, or from ``--init`` weights) with per-epoch test accuracy.

AdamW with linear warm-up then cosine decay, label smoothing, and random shift/flip
augmentation. With the same seed, thread count and torch build, runs are repeatable.
"""

from __future__ import annotations

import math
import sys
import time
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


def train(model: ViT, config: TrainConfig, progress: bool = True) -> dict:
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
        model.train()
        bar = tqdm(batches(train_set, config.batch_size, shuffle=True, seed=config.seed + epoch),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for x, y in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, config)
            x = random_crop_flip(x, config.crop_padding, generator)
            loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        top1 = evaluate(model, test_set)
        history.append({"epoch": epoch + 1, "test_top1": top1, "loss": loss.item()})
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: test top-1 {top1:.4f}", file=sys.stderr)
    model.eval()
    return {"config": asdict(config), "history": history, "test_top1": history[-1]["test_top1"],
            "train_seconds": round(time.perf_counter() - started, 1)}

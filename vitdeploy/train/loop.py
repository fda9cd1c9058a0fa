"""Training from scratch (the reference model) and top-1 evaluation.

AdamW with linear warm-up then cosine decay, label smoothing, and random shift/flip
augmentation. With the same seed, thread count and torch build, runs are repeatable.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitdeploy.data import batches, load_dataset, random_crop_flip
from vitdeploy.errors import VitDeployError
from vitdeploy.models.vit import ViT


@dataclass
class TrainConfig:
    data: str = "fashion-mnist"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    crop_padding: int = 2
    seed: int = 0
    threads: int = 2
    limit: int | None = None

    def validate(self) -> "TrainConfig":
        if self.epochs < 1 or self.batch_size < 1:
            raise VitDeployError("--epochs and --batch-size must be at least 1")
        if not self.lr > 0:
            raise VitDeployError("--lr must be positive")
        return self


def dataset_for(model: ViT, source: str, split: str, limit: int | None = None, resize: bool = False):
    spec = model.spec
    return load_dataset(source, split, img_size=spec.img_size, in_chans=spec.in_chans,
                        mean=spec.mean, std=spec.std, resize=resize, limit=limit)


def lr_at(step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float:
    if step < warmup_steps:
        return config.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def train(model: ViT, config: TrainConfig, progress: bool = True) -> dict:
    """Train ``model`` in place; return a JSON-ready report with per-epoch test accuracy."""
    config.validate()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    train_set = dataset_for(model, config.data, "train", config.limit)
    test_set = dataset_for(model, config.data, "test", config.limit)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps, warmup_steps = config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
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
            tqdm.write(f"epoch {epoch + 1}: test top-1 {top1:.4f}")
    model.eval()
    return {"config": asdict(config), "history": history, "test_top1": history[-1]["test_top1"],
            "train_seconds": round(time.perf_counter() - started, 1)}


@torch.no_grad()
def predict(model: ViT, dataset, batch_size: int = 256, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels, true labels) over a whole dataset."""
    model.eval()
    predictions, labels = [], []
    for x, y in tqdm(batches(dataset, batch_size), desc="torch eval", disable=not progress,
                     total=math.ceil(len(dataset) / batch_size)):
        predictions.append(model(x).argmax(-1))
        labels.append(y)
    return torch.cat(predictions), torch.cat(labels)


def evaluate(model: ViT, dataset, batch_size: int = 256) -> float:
    predictions, labels = predict(model, dataset, batch_size)
    return (predictions == labels).float().mean().item()

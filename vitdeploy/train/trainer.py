"""The training engine shared by ``train``, the fine-tunes (NViT, 2:4) and SPViT.

A ``Trainer`` owns a model's AdamW optimizer, its learning-rate ``Schedule`` (linear warm-up,
then cosine decay) and the seeded generator that drives batch augmentation (and anything else
random in a step). Its step takes the caller's loss; the caller keeps its method's loss and
forward pass. ``run_steps`` runs a fixed number of steps; ``run_epochs`` runs epochs with an
end-of-epoch record, best-epoch tracking and, given a ``Checkpoint``, atomic resumable
checkpoints after every epoch.

It runs where the current ``vitdeploy.runtime`` says: the model (and its ``companions``, e.g. a
distillation teacher) on the runtime's device for the trainer's life and back on the CPU when a
run ends, the loss under autocast (with a loss scaler for fp16), and in a torchrun job as data
parallel training with the global batch sharded over the processes (see ``vitdeploy.runtime``).
"""

from __future__ import annotations

import itertools
import math
import pickle
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vitdeploy import runtime
from vitdeploy.data.loader import CropFlip, EpochBatches
from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_path

CHECKPOINT_FORMAT = 2
PAYLOAD_TYPES = {"epochs_done": int, "model": dict, "optimizer": dict, "generator": torch.Tensor, "history": list,
                 "best_epoch": (int, type(None)), "best_score": (int, float), "best_model": (dict, type(None))}
"""What a checkpoint's fields must be, beyond its format and identity."""

StepLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]
"""(augmented images, labels or soft targets) → the loss to minimise (the mean over the images) and
other per-step figures (floats, means over the images)."""
BatchAugment = Callable[[torch.Tensor, torch.Tensor, int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
"""(images, labels, first row in the global batch, global batch size, generator) → augmented
(images, labels or soft targets); see ``vitdeploy.data.loader``."""


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up over ``warmup_steps``, then cosine decay from a group's peak to its floor
    at ``total_steps``."""

    total_steps: int
    warmup_steps: int = 0

    def lr(self, step: int, peak: float, floor: float = 0.0) -> float:
        if step < self.warmup_steps:
            return peak * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, the class token or position embedding."""
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if param.ndim >= 2 and param.shape[0] > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """``model`` trained by AdamW over ``groups`` (optimizer param groups, each with its peak
    ``lr`` and optionally the ``min_lr`` the schedule decays to, default 0), its batches augmented
    by ``augment`` (default: flips only). ``companions`` are modules the loss also runs (a teacher)."""

    def __init__(self, model: nn.Module, groups: list[dict], schedule: Schedule, seed: int,
                 augment: BatchAugment = CropFlip(), companions: tuple[nn.Module, ...] = ()):
        self.runtime = runtime.current()
        self.modules = (model, *companions)
        for module in self.modules:
            module.to(self.runtime.torch_device)
        self.model = model
        self.schedule = schedule
        self.augment = augment
        self.lr_ranges = [(group["lr"], group.get("min_lr", 0.0)) for group in groups]
        self.optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "min_lr"} for g in groups])
        self.scaler = self.runtime.grad_scaler()
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, step: int, x: torch.Tensor, y: torch.Tensor, loss_fn: StepLoss) -> dict:
        """One optimizer step (the ``step``-th of the schedule) on this process's shard of a global
        batch; returns the loss and the loss function's figures over the global batch."""
        self.model.train()
        for group, (peak, floor) in zip(self.optimizer.param_groups, self.lr_ranges):
            group["lr"] = self.schedule.lr(step, peak, floor)
        x, y = self.runtime.to_device(x, y)
        total = self.runtime.global_count(len(x))
        start, _ = self.runtime.shard_bounds(total)
        x, y = self.augment(x, y, start, total, self.generator)
        with self.runtime.autocast():
            loss, figures = loss_fn(x, y)
        share = len(x) / total
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * share if share != 1 else loss).backward()
        self.runtime.sum_gradients(self.model.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return self._global_figures({"loss": loss.item(), **figures}, share)

    def release(self) -> None:
        """Put the model and its companions back on the CPU (the end of a run)."""
        if self.runtime.torch_device.type != "cpu":
            for module in self.modules:
                module.to("cpu")

    def run_steps(self, data: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int, loss_fn: StepLoss,
                  desc: str, progress: bool) -> list[dict]:
        """The first ``steps`` batches of ``data``, one step each."""
        results = []
        bar = tqdm(itertools.islice(data, steps), total=steps, desc=desc, leave=False,
                   disable=not (progress and self.runtime.main))
        for step, (x, y) in enumerate(bar):
            results.append(self.step(step, x, y, loss_fn))
            bar.set_postfix(loss=f"{results[-1]['loss']:.3f}")
        self.release()
        return results

    def _global_figures(self, figures: dict, share: float) -> dict:
        """Each figure's mean over the global batch (the processes' means weighted by their shares)."""
        if self.runtime.world_size == 1:
            return figures
        totals = self.runtime.reduce_sum(torch.tensor(list(figures.values()), dtype=torch.float64) * share)
        return dict(zip(figures, totals.tolist()))


@dataclass
class EpochResult:
    """What an epoch's end sees: its number (1-based), every step's figures, when it started."""

    epoch: int
    steps: list[dict]
    started: float


@dataclass
class RunState:
    """The resumable record of an epoch-based run."""

    epochs_done: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf
    best_state: dict | None = None

    def record(self, record: dict, model: nn.Module, best_key: str | None) -> bool:
        """Add an epoch's record; keep ``model``'s state when ``record[best_key]`` is the best so
        far. Returns whether it was."""
        self.history.append(record)
        self.epochs_done = record["epoch"]
        if best_key is None or not record[best_key] > self.best_score:
            return False
        self.best_epoch, self.best_score = record["epoch"], record[best_key]
        self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


@dataclass(frozen=True)
class Checkpoint:
    """An atomic, resumable checkpoint file of ``kind`` runs (a word for messages). ``identity``
    (plain data) is what a checkpoint must match to be resumed: the run's settings. The main
    process writes it; every process of a torchrun job resumes from it, and only with the number of
    processes that wrote it (a step's random draws are made per process)."""

    path: Path
    identity: dict
    kind: str

    def save(self, trainer: Trainer, state: RunState) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT, "identity": self.identity, "world_size": trainer.runtime.world_size,
            "epochs_done": state.epochs_done,
            "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "generator": trainer.generator.get_state(), "history": state.history, "best_epoch": state.best_epoch,
            "best_score": state.best_score, "best_model": state.best_state,
        }
        with atomic_path(self.path, suffix=".pt") as tmp:
            torch.save(payload, tmp)

    def resume(self, trainer: Trainer) -> RunState:
        """The run state of the checkpoint (loading its model, optimizer and generator into
        ``trainer``), or a fresh one when there is no checkpoint."""
        if not self.path.is_file():
            return RunState()
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
            raise VitDeployError(f"{self.path}: not a readable {self.kind} checkpoint ({type(exc).__name__}); "
                                 "delete it or start without resuming") from None
        if not isinstance(payload, dict):
            raise self._unusable("it does not hold a checkpoint's fields")
        if payload.get("format") != CHECKPOINT_FORMAT or payload.get("identity") != self.identity:
            raise VitDeployError(f"{self.path} belongs to a different {self.kind} run (other settings, model or "
                                 "format); use a new output directory, or turn resuming off to start over there")
        written_by = payload.get("world_size", 1)
        if written_by != trainer.runtime.world_size:
            raise VitDeployError(f"{self.path} was written by a job of {written_by} process(es); resume it with "
                                 f"{written_by} (torchrun --nproc-per-node), or turn resuming off to start over")
        wrong = [name for name, kinds in PAYLOAD_TYPES.items() if not isinstance(payload.get(name), kinds)]
        if wrong:
            raise self._unusable(f"{', '.join(wrong)} missing or of the wrong type")
        try:
            trainer.model.load_state_dict(payload["model"])
            trainer.optimizer.load_state_dict(payload["optimizer"])
            trainer.generator.set_state(payload["generator"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise self._unusable(f"its state does not fit this run ({type(exc).__name__})") from None
        return RunState(payload["epochs_done"], payload["history"], payload["best_epoch"], payload["best_score"],
                        payload["best_model"])

    def _unusable(self, why: str) -> VitDeployError:
        return VitDeployError(f"{self.path}: not a usable {self.kind} checkpoint: {why}; delete it or start "
                              "without resuming")


@dataclass
class EpochPlan:
    """How ``run_epochs`` goes through ``data``: ``epochs`` shuffled passes (pass e seeded
    ``seed + e``, see ``EpochBatches``); ``finish`` turns an ``EpochResult`` into the epoch's
    record; ``best_key`` names the record's figure to keep the best epoch by (None: no tracking),
    ``on_best`` runs when it improves; ``describe`` gives the line printed per epoch, ``postfix``
    the progress-bar figures of a step."""

    data: object
    epochs: int
    batch_size: int
    seed: int
    finish: Callable[[EpochResult], dict]
    desc: str = "epoch"
    best_key: str | None = None
    on_best: Callable[[RunState], None] | None = None
    describe: Callable[[dict], str] | None = None
    postfix: Callable[[dict], dict] = lambda result: {"loss": f"{result['loss']:.3f}"}


def run_epochs(trainer: Trainer, plan: EpochPlan, loss_fn: StepLoss, state: RunState | None = None,
               checkpoint: Checkpoint | None = None, progress: bool = True) -> RunState:
    """Train from ``state.epochs_done`` (default: a fresh run) to ``plan.epochs``; after each epoch,
    record it, track the best, and checkpoint (after ``on_best``, so the best model is saved first)."""
    state = state if state is not None else RunState()
    data = EpochBatches(plan.data, plan.batch_size, plan.seed)
    steps_per_epoch = len(data)
    show = progress and trainer.runtime.main
    for epoch in range(state.epochs_done, plan.epochs):
        started = time.perf_counter()
        bar = tqdm(data.epoch(epoch), total=steps_per_epoch, desc=f"{plan.desc} {epoch + 1}/{plan.epochs}",
                   disable=not show)
        results = []
        for i, (x, y) in enumerate(bar):
            results.append(trainer.step(epoch * steps_per_epoch + i, x, y, loss_fn))
            bar.set_postfix(**plan.postfix(results[-1]))
        record = plan.finish(EpochResult(epoch + 1, results, started))
        if state.record(record, trainer.model, plan.best_key) and plan.on_best is not None:
            plan.on_best(state)
        if checkpoint is not None:
            checkpoint.save(trainer, state)
        if show and plan.describe is not None:
            tqdm.write(plan.describe(record), file=sys.stderr)
    trainer.release()
    return state

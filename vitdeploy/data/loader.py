"""Training batches at scale: shuffled global batches, sharded over the processes of a job, from
loader workers that decode and augment each image, epoch after epoch.

``--batch-size`` is the global batch. Every process draws the same shuffled order (seeded by the
epoch), cuts it into global batches and takes its contiguous shard of each
(``Runtime.shard_bounds``), so each image is seen once per epoch across the job. Datasets that
augment (``random_items``) get ``(index, seed)`` keys, the seed derived from the epoch's seed and
the image's index: an image is augmented the same way whichever process loads it, so 1 and N
processes see the same augmented batches. Batch-level augmentation (shift/flip for in-memory data,
Mixup/CutMix for image folders) draws for the whole global batch and applies the process's rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from vitdeploy import runtime
from vitdeploy.data.augment import AugmentConfig, apply_mix, plan_mix, soft_targets
from vitdeploy.data.transforms import random_crop_flip
from vitdeploy.errors import VitDeployError

MAX_DEFAULT_WORKERS = 16
PREFETCH_BATCHES = 4
"""Batches each loader worker prepares ahead."""


def default_workers() -> int:
    """Loader workers per process: the CPU cores this process may use, split over the node's
    processes (one core left for the training loop itself), at most ``MAX_DEFAULT_WORKERS``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(MAX_DEFAULT_WORKERS, per_process - 1))


def sample_seed(epoch_seed: int, index: int) -> int:
    """The augmentation seed of image ``index`` in the epoch seeded ``epoch_seed``."""
    return (epoch_seed * 1_000_003 + index) % (2**63 - 1)


def global_batches(count: int, batch_size: int, seed: int, shuffle: bool = True) -> list[torch.Tensor]:
    """The epoch's global batches of indices into ``count`` items (the last may be short)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(count)
    return list(order.split(batch_size))


class ShardedBatchSampler:
    """For a DataLoader: this process's keys of each global batch of the epoch set by ``set_epoch``;
    ``training=False`` asks for plain indices (the evaluation transform) and keeps the last batch."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True, training: bool = True):
        self.count, self.batch_size, self.seed, self.shuffle = len(dataset), batch_size, seed, shuffle
        self.keyed = training and getattr(dataset, "random_items", False)
        self.drop_last = self.keyed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count // self.batch_size if self.drop_last else -(-self.count // self.batch_size)

    def __iter__(self):
        epoch_seed = self.seed + self.epoch
        for batch in global_batches(self.count, self.batch_size, epoch_seed, self.shuffle)[:len(self)]:
            local = runtime.current().shard(batch).tolist()
            yield [(i, sample_seed(epoch_seed, i)) for i in local] if self.keyed else local


class EpochBatches:
    """Epochs of shuffled global batches of ``dataset`` (this process's shard of each).

    In-memory datasets are sliced directly; others go through one DataLoader kept for the whole
    run: the dataset's ``loader_workers`` processes (None: ``default_workers()``; datasets without
    the attribute load in this process), persistent across epochs, pinned memory on CUDA,
    ``PREFETCH_BATCHES`` batches ahead per worker. Datasets that augment drop an epoch's last
    short batch (as DeiT's training loader does), so Mixup always pairs within a shard.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int):
        runtime.current().require_divisible_batch(batch_size)
        _require_whole_batch(dataset, batch_size)
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.sampler = ShardedBatchSampler(dataset, batch_size, seed)
        self.loader = None if hasattr(dataset, "batch") else _loader(dataset, self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch`` (0-based): the same on every call."""
        self.sampler.set_epoch(epoch)
        if self.loader is None:
            return sampled_batches(self.dataset, self.sampler)
        return _one_line_errors(iter(self.loader))

    def endless(self, first_epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = first_epoch
        while True:
            yield from self.epoch(epoch)
            epoch += 1


def sampled_batches(dataset: Dataset, sampler: ShardedBatchSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches ``sampler`` picks: sliced from an in-memory dataset, else loaded in this process."""
    if hasattr(dataset, "batch"):
        return (dataset.batch(torch.tensor(keys, dtype=torch.long)) for keys in sampler)
    return iter(DataLoader(dataset, batch_sampler=sampler, num_workers=0))


def _require_whole_batch(dataset: Dataset, batch_size: int) -> None:
    augment = getattr(dataset, "augment", None)
    if augment is not None and len(dataset) < batch_size:
        raise VitDeployError(f"the training data has {len(dataset)} images, fewer than one batch of {batch_size} "
                             "(training drops a short last batch); lower --batch-size")
    if augment is not None and (augment.mixup or augment.cutmix) and (batch_size // runtime.current().world_size) % 2:
        raise VitDeployError(f"Mixup/CutMix pair the images of each process's {batch_size} / "
                             f"{runtime.current().world_size} batch share, which must be even: change --batch-size")


def _loader(dataset: Dataset, sampler: ShardedBatchSampler) -> DataLoader:
    workers = getattr(dataset, "loader_workers", 0)
    workers = default_workers() if workers is None else workers
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      pin_memory=runtime.current().torch_device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=PREFETCH_BATCHES if workers > 0 else None)


def _one_line_errors(batches: Iterator) -> Iterator:
    """A loader worker's user error (an undecodable image, say) as the one line it was raised with."""
    while True:
        try:
            yield next(batches)
        except StopIteration:
            return
        except VitDeployError as exc:
            lines = str(exc).strip().splitlines()
            raise VitDeployError(lines[-1].split(": ", 1)[-1] if len(lines) > 1 else str(exc)) from None


# --- batch-level augmentation ---------------------------------------------------------------------

@dataclass(frozen=True)
class CropFlip:
    """Random shift by up to ``padding`` pixels and horizontal flips (in-memory data)."""

    padding: int = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, start: int, total: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return random_crop_flip(x, self.padding, generator, rows=(start, start + len(x), total)), y


@dataclass(frozen=True)
class MixCut:
    """Mixup/CutMix over pairs of the global batch, with label-smoothed soft targets (image folders)."""

    config: AugmentConfig
    num_classes: int

    def __call__(self, x: torch.Tensor, y: torch.Tensor, start: int, total: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        plan = plan_mix(total, x.shape[-1], self.config, generator)
        return apply_mix(x, soft_targets(y, self.num_classes, self.config.smoothing).to(x.dtype), plan, start)


def batch_augment_for(dataset: Dataset, num_classes: int, crop_padding: int):
    """The batch-level augmentation that goes with ``dataset``'s items."""
    augment = getattr(dataset, "augment", None)
    if augment is not None:
        return MixCut(augment, num_classes)
    return CropFlip(crop_padding)

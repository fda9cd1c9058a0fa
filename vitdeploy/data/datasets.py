"""The single entry point for data: ``load_dataset`` builds a dataset of model inputs, ``batches`` iterates it.

Every dataset returned here has a ``classes`` list and yields ``(float32 (C, H, W) normalized
image, int64 label)`` items.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vitdeploy.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from vitdeploy.data.imagefolder import ImageFolderDataset
from vitdeploy.data.loader import ShardedBatchSampler, sampled_batches
from vitdeploy.data.pipeline import Pipeline
from vitdeploy.data.transforms import normalize, to_model_input
from vitdeploy.errors import VitDeployError

FASHION_MNIST_NAMES = ("fashion-mnist", "fmnist")
IMAGE_FOLDER_SPLITS = ("train", "test", "val")
# Above this size the converted split is not kept in memory (60k images upsampled to 3x224x224 are 36 GB).
PRECOMPUTE_MAX_BYTES = 1 << 30


class InMemoryImageDataset(Dataset):
    """uint8 images held in memory and served as normalized float32 model inputs.

    The whole split is converted once when the result fits in ``PRECOMPUTE_MAX_BYTES``;
    otherwise each requested batch is converted on the fly.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str],
        *,
        img_size: int,
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize: bool,
    ) -> None:
        self.images = images
        self.labels = labels
        self.classes = classes
        self._convert = functools.partial(
            to_model_input, img_size=img_size, in_chans=in_chans, mean=mean, std=std, resize=resize
        )
        self._convert(images[:1])  # fail fast on a size or channel mismatch
        converted_bytes = len(images) * in_chans * img_size * img_size * 4
        self._inputs = self._convert(images) if converted_bytes <= PRECOMPUTE_MAX_BYTES else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(torch.tensor([index]))
        return x[0], y[0]

    def batch(self, indices: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs (N, C, H, W) and labels (N,) for a slice or an index tensor."""
        x = self._inputs[indices] if self._inputs is not None else self._convert(self.images[indices])
        return x, self.labels[indices]


def load_dataset(
    source: str | os.PathLike,
    split: str,
    *,
    img_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: bool = False,
    limit: int | None = None,
    root: str | os.PathLike | None = None,
    pipeline: Pipeline | None = None,
) -> Dataset:
    """Load ``split`` of ``source`` ("fashion-mnist"/"fmnist" or an image-folder path) as model inputs.

    ``limit`` keeps the first N items. ``root`` is the Fashion-MNIST directory (default:
    ``$VITDEPLOY_FASHION_MNIST`` or the Debian path). Image folders are resized with the standard
    evaluation transform, so ``resize`` only matters for Fashion-MNIST. With a training
    ``pipeline``, an image folder also serves augmented training items from loader workers.
    """
    if limit is not None and limit < 1:
        raise VitDeployError(f"limit must be a positive number of items, got {limit}")
    if len(mean) != in_chans or len(std) != in_chans:
        raise VitDeployError(
            f"mean/std have {len(mean)}/{len(std)} values but the model has in_chans={in_chans}; "
            "give one value per channel"
        )
    if str(source).lower() in FASHION_MNIST_NAMES:
        images, labels = load_fashion_mnist(split, root)
        return InMemoryImageDataset(
            images[:limit],
            labels[:limit],
            list(FASHION_MNIST_CLASSES),
            img_size=img_size,
            in_chans=in_chans,
            mean=mean,
            std=std,
            resize=resize,
        )
    if Path(source).is_dir():
        return _load_image_folder(Path(source), split, img_size, in_chans, mean, std, limit, pipeline or Pipeline(None))
    raise VitDeployError(
        f"unknown data source {str(source)!r}: use 'fashion-mnist' (alias 'fmnist') "
        "or the path of an image folder laid out as <dir>/<class>/<image>"
    )


def _load_image_folder(
    source: Path,
    split: str,
    img_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    limit: int | None,
    pipeline: Pipeline,
) -> ImageFolderDataset:
    if split not in IMAGE_FOLDER_SPLITS:
        raise VitDeployError(
            f"unknown split {split!r} for image folder {source}: use one of {list(IMAGE_FOLDER_SPLITS)}"
        )
    split_dir = source / split
    folder = split_dir if split_dir.is_dir() else source
    transform = functools.partial(_normalize_uint8, mean=mean, std=std)
    return ImageFolderDataset(folder, img_size, in_chans, transform=transform, limit=limit, augment=pipeline.augment,
                              loader_workers=pipeline.workers)


def _normalize_uint8(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return normalize(image.to(torch.float32) / 255.0, mean, std)


def holdout_split(dataset: Dataset, size: int) -> tuple[Subset, Subset]:
    """(training part, validation part) of ``dataset``: its last ``size`` items are held out."""
    if not 0 < size < len(dataset):
        raise VitDeployError(f"--val-size must be between 1 and {len(dataset) - 1} (the training data has "
                             f"{len(dataset)} images), got {size}")
    cut = len(dataset) - size
    return Subset(dataset, range(cut)), Subset(dataset, range(cut, len(dataset)))


def batches(
    dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, shard: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``(x, y)`` batches; when shuffling, the order is fixed by ``seed``. With ``shard``,
    ``batch_size`` is the global batch and this process of a torchrun job gets its share of each."""
    if batch_size < 1:
        raise VitDeployError(f"batch size must be at least 1, got {batch_size}")
    if shard:
        return sampled_batches(dataset, ShardedBatchSampler(dataset, batch_size, seed, shuffle, training=False))
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, InMemoryImageDataset):
        return _in_memory_batches(dataset, batch_size, shuffle, generator)
    return iter(DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0))


def _in_memory_batches(
    dataset: InMemoryImageDataset, batch_size: int, shuffle: bool, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    count = len(dataset)
    order = torch.randperm(count, generator=generator) if shuffle else None
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        yield dataset.batch(order[start:stop] if order is not None else slice(start, stop))


def dataset_for(model, source: str, split: str, limit: int | None = None, resize: bool = False,
                pipeline: Pipeline | None = None):
    """A dataset preprocessed for ``model``: its image size, channels, mean and std; ``pipeline``
    says how its training items are made (see ``load_dataset``)."""
    spec = model.spec
    dataset = load_dataset(source, split, img_size=spec.img_size, in_chans=spec.in_chans,
                           mean=spec.mean, std=spec.std, resize=resize, limit=limit, pipeline=pipeline)
    if len(dataset.classes) > spec.num_classes:
        raise VitDeployError(f"{source} has {len(dataset.classes)} classes but the model's head has "
                             f"{spec.num_classes}: use data labelled for this model")
    return dataset

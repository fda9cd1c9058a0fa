"""A dataset over a ``root/<class_name>/<image>`` directory tree (e.g. the ImageNet layout).

Images are decoded lazily with PIL. An item asked for by index gets the standard evaluation
transform: resize the shorter side to ``img_size * 256 / 224``, then center-crop ``img_size`` x
``img_size``. A dataset made with ``augment`` also serves training items, asked for by
``(index, seed)`` keys (see ``vitdeploy.data.loader``): the DeiT augmentations
(``vitdeploy.data.augment``), every random choice drawn from a generator seeded with ``seed``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vitdeploy.data.augment import random_erase, train_image
from vitdeploy.errors import VitDeployError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_PIL_MODES = {1: "L", 3: "RGB"}


def find_classes(root: Path) -> list[str]:
    """Sorted names of the visible subdirectories of ``root``; each one is a class."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_images(class_dir: Path) -> list[Path]:
    """All image files below ``class_dir`` (recursively), in sorted path order."""
    return sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def resize_size(img_size: int) -> int:
    """Shorter-side length before the center crop (256 for a 224 crop)."""
    return img_size * 256 // 224


def decode_image(path: Path, in_chans: int) -> Image.Image:
    """The image at ``path``, decoded in the mode of ``in_chans`` (L or RGB); a file that cannot be
    decoded is a user error naming it."""
    try:
        with Image.open(path) as raw:
            return raw.convert(_PIL_MODES[in_chans])
    except (UnidentifiedImageError, OSError) as exc:
        raise VitDeployError(f"cannot decode image {path}: {exc}; remove or replace the file") from None


def load_image(path: Path, img_size: int, in_chans: int) -> torch.Tensor:
    """Decode one image into uint8 (in_chans, img_size, img_size) with the evaluation resize/crop."""
    image = decode_image(path, in_chans)
    return pil_to_tensor(_center_crop(_resize_shorter_side(image, resize_size(img_size)), img_size))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 (C, H, W) pixels of a PIL image."""
    pixels = np.array(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if width <= height:
        new_size = (size, max(1, round(height * size / width)))
    else:
        new_size = (max(1, round(width * size / height)), size)
    return image.resize(new_size, Image.Resampling.BILINEAR)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left = round((width - size) / 2)
    top = round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))


class ImageFolderDataset(Dataset):
    """Items are ``(transform(uint8 image (C, H, W)), class index)``; classes are the sorted subfolders.

    ``augment`` (an ``AugmentConfig``) makes it serve training items for ``(index, seed)`` keys;
    ``loader_workers`` is how many loader processes its training batches want (None: the default).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        img_size: int,
        in_chans: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        limit: int | None = None,
        augment=None,
        loader_workers: int | None = None,
    ) -> None:
        self.root = Path(root)
        if in_chans not in _PIL_MODES:
            raise VitDeployError(f"in_chans={in_chans} is not supported for image folders: use 1 or 3")
        if not self.root.is_dir():
            raise VitDeployError(
                f"image folder {self.root} does not exist; pass a directory laid out as root/<class>/<image>"
            )
        self.img_size = img_size
        self.in_chans = in_chans
        self.transform = transform
        self.augment = augment
        self.random_items = augment is not None
        self.loader_workers = loader_workers
        self.classes = find_classes(self.root)
        if not self.classes:
            raise VitDeployError(f"{self.root} has no class subdirectories; lay it out as root/<class>/<image>")
        self.samples = [(path, index) for index, name in enumerate(self.classes) for path in self._images_of(name)]
        self.samples = self.samples[:limit]

    def _images_of(self, class_name: str) -> list[Path]:
        images = find_images(self.root / class_name)
        if not images:
            raise VitDeployError(f"class folder {self.root / class_name} holds no images "
                                 f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder")
        return images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            return self._training_item(*key)
        path, label = self.samples[key]
        image = load_image(path, self.img_size, self.in_chans)
        return (self.transform(image) if self.transform else image), label

    def _training_item(self, index: int, seed: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        generator = torch.Generator().manual_seed(seed)
        image = train_image(decode_image(path, self.in_chans), self.img_size, self.augment, generator)
        x = self.transform(image) if self.transform else image.float()
        return random_erase(x, self.augment, generator), label

"""A dataset over a ``root/<class_name>/<image>`` directory tree (e.g. the ImageNet val layout).

Images are decoded lazily with PIL and given the standard evaluation transform: resize the
shorter side to ``img_size * 256 / 224``, then center-crop ``img_size`` x ``img_size``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

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


def load_image(path: Path, img_size: int, in_chans: int) -> torch.Tensor:
    """Decode one image into uint8 (in_chans, img_size, img_size) with the evaluation resize/crop."""
    try:
        with Image.open(path) as raw:
            image = raw.convert(_PIL_MODES[in_chans])
    except (UnidentifiedImageError, OSError) as exc:
        raise VitDeployError(f"cannot decode image {path}: {exc}; remove or replace the file") from exc
    image = _center_crop(_resize_shorter_side(image, resize_size(img_size)), img_size)
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
    """Items are ``(transform(uint8 image (C, H, W)), class index)``; classes are the sorted subfolders."""

    def __init__(
        self,
        root: str | os.PathLike,
        img_size: int,
        in_chans: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        limit: int | None = None,
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
        self.classes = find_classes(self.root)
        if not self.classes:
            raise VitDeployError(f"{self.root} has no class subdirectories; lay it out as root/<class>/<image>")
        self.samples = [
            (path, index) for index, name in enumerate(self.classes) for path in find_images(self.root / name)
        ]
        if not self.samples:
            raise VitDeployError(
                f"{self.root} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in its class subdirectories"
            )
        self.samples = self.samples[:limit]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_image(path, self.img_size, self.in_chans)
        return (self.transform(image) if self.transform else image), label

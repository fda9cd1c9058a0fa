"""A small ImageFolder tree of real JPEG files cut from Fashion-MNIST, for tests.

Import it as ``from tests.data.jpeg_folder import write_jpeg_folder`` (the repository root is on
``sys.path`` under ``python -m pytest``, as for ``from tests.conftest import tiny_model``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from vitdeploy.data.fashion_mnist import FASHION_MNIST_CLASSES, IMAGE_SIZE, load_fashion_mnist


def class_dir_name(label: int) -> str:
    """Folder name of a Fashion-MNIST class, e.g. ``"0_t-shirt_top"``: sorts in label order, no slash."""
    return f"{label}_{FASHION_MNIST_CLASSES[label].lower().replace('/', '_').replace(' ', '_')}"


@lru_cache(maxsize=1)
def _train_split() -> tuple[torch.Tensor, torch.Tensor]:
    return load_fashion_mnist("train")


def write_jpeg_folder(
    root: Path,
    per_class: int,
    classes: int = 3,
    size: int = 28,
    splits: tuple[str, ...] = ("train", "val"),
    rgb: bool = True,
) -> Path:
    """Write ``root/<split>/<class_dir_name(label)>/<n>.jpg`` for labels 0..classes-1; return ``root``.

    Each split gets ``per_class`` images of every class: the first ones of that class in
    Fashion-MNIST's train split, split ``i`` taking images ``i * per_class`` up to
    ``(i + 1) * per_class``, so the splits never share an image. Images are grayscale ("L")
    or converted to "RGB", and resized (bilinear) to ``size`` x ``size`` when ``size != 28``.
    """
    images, labels = _train_split()
    for label in range(classes):
        of_class = images[labels == label]
        for split_index, split in enumerate(splits):
            folder = Path(root) / split / class_dir_name(label)
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                _to_pil(of_class[split_index * per_class + n], size, rgb).save(folder / f"{n}.jpg", quality=95)
    return Path(root)


def _to_pil(pixels: torch.Tensor, size: int, rgb: bool) -> Image.Image:
    image = Image.fromarray(pixels.numpy())
    if size != IMAGE_SIZE:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return image.convert("RGB") if rgb else image

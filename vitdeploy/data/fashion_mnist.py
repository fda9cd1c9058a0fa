"""Fashion-MNIST from its original IDX files (as shipped by Debian's ``dataset-fashion-mnist``).

The IDX format is a 4-byte magic number (two zero bytes, a data-type code, the number of
dimensions), one big-endian uint32 per dimension, then the raw data. Files may be gzipped.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from vitdeploy.errors import VitDeployError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
ROOT_ENV_VAR = "VITDEPLOY_FASHION_MNIST"
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIZE = 28

_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08


def default_root() -> Path:
    """The directory searched when no root is given: ``$VITDEPLOY_FASHION_MNIST`` or the Debian path."""
    return Path(os.environ.get(ROOT_ENV_VAR) or DEFAULT_ROOT)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file (raw or ``.gz``) into an array of the declared shape."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise VitDeployError(f"cannot read IDX file {path}: {exc}; re-install or re-download it") from exc
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise VitDeployError(f"{path} is not an IDX file (bad magic number); re-install or re-download it")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _IDX_UBYTE:
        raise VitDeployError(
            f"{path} holds IDX data type 0x{dtype_code:02X}; only unsigned bytes (0x08) are supported"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise VitDeployError(f"{path} is truncated inside its IDX header; re-install or re-download it")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header_size != expected:
        raise VitDeployError(
            f"{path} declares shape {shape} ({expected} bytes) but holds {len(raw) - header_size} bytes "
            "of data; re-install or re-download it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _find_idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise VitDeployError(
        f"Fashion-MNIST not found under {root} (no {stem}[.gz]): install it with "
        f"`apt-get install dataset-fashion-mnist` or set {ROOT_ENV_VAR} to its directory"
    )


def load_fashion_mnist(split: str, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images uint8 (N, 28, 28), labels int64 (N,))`` for split ``"train"`` or ``"test"``."""
    if split not in _SPLIT_FILES:
        raise VitDeployError(f"unknown Fashion-MNIST split {split!r}: use one of {sorted(_SPLIT_FILES)}")
    root = Path(root) if root is not None else default_root()
    image_stem, label_stem = _SPLIT_FILES[split]
    images = read_idx(_find_idx_file(root, image_stem))
    labels = read_idx(_find_idx_file(root, label_stem))
    _check_split(images, labels, split, root)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _check_split(images: np.ndarray, labels: np.ndarray, split: str, root: Path) -> None:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise VitDeployError(
            f"Fashion-MNIST {split} images under {root} have shape {images.shape}, expected (N, 28, 28); "
            "re-install the dataset"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise VitDeployError(
            f"Fashion-MNIST {split} under {root} has {len(images)} images but labels of shape {labels.shape}; "
            "re-install the dataset"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise VitDeployError(
            f"Fashion-MNIST {split} labels under {root} go up to {labels.max()}, expected 0..9; "
            "re-install the dataset"
        )

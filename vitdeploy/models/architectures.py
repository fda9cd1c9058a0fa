"""Registered architectures: a small timm-style registry of named specs (no weights)."""

from __future__ import annotations

from typing import Callable

from vitdeploy.models.spec import ViTSpec, uniform_blocks
from vitdeploy.registry import Registry

ARCHITECTURES: Registry[Callable[[], ViTSpec]] = Registry("architecture", group="vitdeploy.architectures")
"""Named spec factories; installed packages add theirs through the entry-point group."""

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
REFERENCE_MODEL = "fmnist_vit"


def get_spec(name: str) -> ViTSpec:
    return ARCHITECTURES.get(name)()


def _imagenet_vit(name: str, embed_dim: int, heads: int, distilled: bool = False, **kwargs) -> ViTSpec:
    return ViTSpec(
        img_size=224, patch_size=16, in_chans=3, embed_dim=embed_dim, num_classes=1000,
        blocks=uniform_blocks(12, embed_dim, heads), distilled=distilled, name=name, **kwargs,
    )


@ARCHITECTURES.register
def deit_tiny_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_tiny_patch16_224", 192, 3)


@ARCHITECTURES.register
def deit_small_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_small_patch16_224", 384, 6)


@ARCHITECTURES.register
def deit_base_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_base_patch16_224", 768, 12)


@ARCHITECTURES.register
def deit_tiny_distilled_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_tiny_distilled_patch16_224", 192, 3, distilled=True)


@ARCHITECTURES.register
def deit_small_distilled_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_small_distilled_patch16_224", 384, 6, distilled=True)


@ARCHITECTURES.register
def deit_base_distilled_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_base_distilled_patch16_224", 768, 12, distilled=True)


@ARCHITECTURES.register
def vit_base_patch16_224() -> ViTSpec:
    return _imagenet_vit("vit_base_patch16_224", 768, 12, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@ARCHITECTURES.register
def fmnist_vit() -> ViTSpec:
    """The Fashion-MNIST reference model: 28×28 input, 4×4 patches → 49 patch tokens + class."""
    return ViTSpec(
        img_size=28, patch_size=4, in_chans=1, embed_dim=64, num_classes=10,
        blocks=uniform_blocks(6, 64, 4, mlp_ratio=4.0),
        mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, name=REFERENCE_MODEL,
    )

"""Registered architectures: a small timm-style registry of named specs (no weights)."""

from __future__ import annotations

from typing import Callable

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import ViTSpec, uniform_blocks

_REGISTRY: dict[str, Callable[[], ViTSpec]] = {}

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
REFERENCE_MODEL = "fmnist_vit"


def register_model(fn: Callable[[], ViTSpec]) -> Callable[[], ViTSpec]:
    _REGISTRY[fn.__name__] = fn
    return fn


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ViTSpec:
    if name not in _REGISTRY:
        raise VitDeployError(f"unknown model name {name!r}; known names: {', '.join(model_names())}")
    return _REGISTRY[name]()


def _imagenet_vit(name: str, embed_dim: int, heads: int, distilled: bool = False, **kwargs) -> ViTSpec:
    return ViTSpec(
        img_size=224, patch_size=16, in_chans=3, embed_dim=embed_dim, num_classes=1000,
        blocks=uniform_blocks(12, embed_dim, heads), distilled=distilled, name=name, **kwargs,
    )


@register_model
def deit_tiny_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_tiny_patch16_224", 192, 3)


@register_model
def deit_small_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_small_patch16_224", 384, 6)


@register_model
def deit_base_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_base_patch16_224", 768, 12)


@register_model
def deit_tiny_distilled_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_tiny_distilled_patch16_224", 192, 3, distilled=True)


@register_model
def deit_small_distilled_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_small_distilled_patch16_224", 384, 6, distilled=True)


@register_model
def deit_base_distilled_patch16_224() -> ViTSpec:
    return _imagenet_vit("deit_base_distilled_patch16_224", 768, 12, distilled=True)


@register_model
def vit_base_patch16_224() -> ViTSpec:
    return _imagenet_vit("vit_base_patch16_224", 768, 12, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@register_model
def fmnist_vit() -> ViTSpec:
    """The Fashion-MNIST reference model: 28×28 input, 4×4 patches → 49 patch tokens + class."""
    return ViTSpec(
        img_size=28, patch_size=4, in_chans=1, embed_dim=64, num_classes=10,
        blocks=uniform_blocks(6, 64, 4, mlp_ratio=4.0),
        mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, name=REFERENCE_MODEL,
    )

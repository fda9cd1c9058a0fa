"""Named model configs (a small timm-style registry) and resolution of a user's model reference.

A model reference is whatever a user types for MODEL on the command line: a vitdeploy artifact
directory, a timm/DeiT checkpoint file, or a registered name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import ViTSpec, uniform_blocks
from vitdeploy.models.vit import ViT

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


def shipped_weights_dir(name: str) -> Path | None:
    """The artifact directory of a model whose trained weights ship inside the package."""
    path = Path(str(resources.files("vitdeploy") / "assets" / name))
    return path if (path / "weights.safetensors").is_file() else None


def create_model(name: str, seed: int = 0) -> ViT:
    """A registered model: shipped trained weights when they exist, else seeded random init."""
    from vitdeploy.models.checkpoint import load_artifact

    shipped = shipped_weights_dir(name)
    if shipped is not None:
        return load_artifact(shipped)
    model = ViT(get_spec(name))
    model.reset_parameters(seed)
    return model.eval()


def load_model(ref: str, arch: str | None = None) -> ViT:
    """Resolve MODEL: an artifact directory, a timm/DeiT checkpoint file, or a registered name."""
    from vitdeploy.models.checkpoint import CHECKPOINT_SUFFIXES, load_artifact, load_timm_checkpoint

    path = Path(ref)
    if path.is_dir():
        return load_artifact(path)
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise VitDeployError(f"{ref}: unsupported file type {path.suffix!r}; "
                                 f"expected one of {', '.join(CHECKPOINT_SUFFIXES)} or an artifact directory")
        return load_timm_checkpoint(path, get_spec(arch) if arch else None)
    if ref in _REGISTRY:
        return create_model(ref)
    if path.suffix or "/" in ref:
        raise VitDeployError(f"{ref}: no such file or directory")
    raise VitDeployError(f"unknown model {ref!r}: not a file, an artifact directory or a registered name "
                         f"({', '.join(model_names())})")

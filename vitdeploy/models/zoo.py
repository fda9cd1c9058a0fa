"""Resolution of a user's model reference (named specs live in ``architectures``).

A model reference is whatever a user types for MODEL on the command line: a vitdeploy artifact
directory, a timm/DeiT checkpoint file, or a registered name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vitdeploy.errors import VitDeployError
from vitdeploy.models.architectures import get_spec, model_names
from vitdeploy.models.vit import ViT

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


def load_model(ref: str, arch: str | None = None, model_args: dict | None = None) -> ViT:
    """Resolve MODEL: an artifact directory, a timm/DeiT checkpoint file, or a registered name.

    ``arch`` and ``model_args`` (timm model arguments such as num_heads, plus mean/std) apply to
    checkpoint files only.
    """
    from vitdeploy.models.checkpoint import CHECKPOINT_SUFFIXES, load_artifact, load_timm_checkpoint

    path = Path(ref)
    is_checkpoint = path.name.endswith(CHECKPOINT_SUFFIXES)
    if (arch or model_args) and not is_checkpoint:
        raise VitDeployError("--arch and --model-arg apply only to checkpoint files "
                             f"({', '.join(CHECKPOINT_SUFFIXES)})")
    if path.is_dir() and not is_checkpoint:
        return load_artifact(path)
    if path.exists():
        if not is_checkpoint:
            raise VitDeployError(f"{ref}: unsupported file type {path.suffix!r}; "
                                 f"expected one of {', '.join(CHECKPOINT_SUFFIXES)} or an artifact directory")
        return load_timm_checkpoint(path, get_spec(arch) if arch else None, model_args)
    if ref in model_names():
        return create_model(ref)
    if path.suffix or "/" in ref:
        raise VitDeployError(f"{ref}: no such file or directory")
    raise VitDeployError(f"unknown model {ref!r}: not a file, an artifact directory or a registered name "
                         f"({', '.join(model_names())})")

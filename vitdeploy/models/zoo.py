"""Resolution of a user's model reference (named specs live in ``architectures``).

A model reference is whatever a user types for MODEL on the command line: a vitdeploy artifact
directory, a Hugging Face ViT/DeiT directory, a timm/DeiT checkpoint file (or timm hub directory),
or a registered name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vitdeploy.errors import VitDeployError
from vitdeploy.models.architectures import ARCHITECTURES, get_spec
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
    """Resolve MODEL: a vitdeploy, Hugging Face or timm hub directory, a timm/DeiT checkpoint file,
    or a registered name.

    ``arch`` and ``model_args`` (timm model arguments such as num_heads, plus mean/std) apply to
    checkpoints; a Hugging Face directory's config decides everything but mean/std.
    """
    from vitdeploy.models.checkpoint import CHECKPOINT_SUFFIXES, load_timm_checkpoint

    path = Path(ref)
    is_checkpoint = path.name.endswith(CHECKPOINT_SUFFIXES)
    if path.is_dir() and not is_checkpoint:
        return _load_directory(path, arch, model_args or {})
    if (arch or model_args) and not is_checkpoint:
        raise VitDeployError("--arch and --model-arg apply only to checkpoints "
                             f"({', '.join(CHECKPOINT_SUFFIXES)}, or a Hugging Face or timm hub directory)")
    if path.exists():
        if not is_checkpoint:
            raise VitDeployError(f"{ref}: unsupported file type {path.suffix!r}; "
                                 f"expected one of {', '.join(CHECKPOINT_SUFFIXES)} or a model directory")
        return load_timm_checkpoint(path, get_spec(arch) if arch else None, model_args)
    if ref in ARCHITECTURES.names():
        return create_model(ref)
    if path.suffix or "/" in ref:
        raise VitDeployError(f"{ref}: no such file or directory")
    raise VitDeployError(f"unknown model {ref!r}: not a file, a model directory or a registered name "
                         f"({', '.join(ARCHITECTURES.names())})")


def _load_directory(path: Path, arch: str | None, model_args: dict) -> ViT:
    """A vitdeploy model directory, a Hugging Face ViT/DeiT directory, or a timm hub directory
    (timm's config.json beside model.safetensors or pytorch_model.bin)."""
    from vitdeploy.models import checkpoint, huggingface

    if (path / checkpoint.SPEC_FILE).is_file() or not (path / checkpoint.TIMM_CONFIG_FILE).is_file():
        if arch or model_args:
            raise VitDeployError(f"{path}: --arch and --model-arg apply only to checkpoints; a vitdeploy model "
                                 "directory's spec.json decides its architecture")
        return checkpoint.load_artifact(path)
    if huggingface.is_hf_directory(path):
        if arch or set(model_args) - {"mean", "std"}:
            raise VitDeployError(f"{path}: a Hugging Face model's config.json decides its architecture; "
                                 "only --model-arg mean=[...] and std=[...] apply to it")
        return huggingface.load_hf_model(path, checkpoint.normalisation_args(model_args, "--model-arg"))
    weights = [path / name for name in checkpoint.TIMM_HUB_WEIGHTS if (path / name).is_file()]
    if not weights:
        raise VitDeployError(f"{path}: a timm hub directory needs its weights beside config.json: "
                             f"{' or '.join(checkpoint.TIMM_HUB_WEIGHTS)}")
    return checkpoint.load_timm_checkpoint(weights[0], get_spec(arch) if arch else None, model_args)

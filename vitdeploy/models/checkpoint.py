"""Checkpoints: timm/DeiT state dicts in, vitdeploy artifacts in and out.

A vitdeploy artifact is a directory holding ``spec.json`` and ``weights.safetensors``; it loads
with one call and never unpickles anything. timm/DeiT ``.pth`` files are read with
``torch.load(weights_only=True)``, ``.safetensors`` with safetensors.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_dir
from vitdeploy.models.spec import BlockSpec, ViTSpec
from vitdeploy.models.vit import ViT

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
SPEC_FILE, WEIGHTS_FILE = "spec.json", "weights.safetensors"
ARTIFACT_REPORTS = ("train.json", "prune.json")
"""JSON reports that may live in a model directory beside its spec and weights."""
_WRAPPER_KEYS = ("model", "state_dict", "model_ema")
# Head counts of timm's standard ViT/DeiT widths. Heads leave no trace in weight shapes, so any
# other width needs --arch.
_STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pth/.safetensors checkpoint, unwrapped from {'model': …} style wrappers."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise VitDeployError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VitDeployError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def spec_from_timm_state(state: dict[str, torch.Tensor]) -> ViTSpec:
    """Infer the architecture of an unpruned timm/DeiT state dict from its tensor shapes."""
    _require_keys(state, ("cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight"))
    embed_dim = state["cls_token"].shape[-1]
    if embed_dim not in _STANDARD_HEADS:
        raise VitDeployError(f"cannot infer the head count for embed dim {embed_dim} (not a standard "
                             "DeiT/ViT width); pass --arch NAME")
    distilled = "dist_token" in state
    patch_weight = state["patch_embed.proj.weight"]
    num_patches = state["pos_embed"].shape[1] - (2 if distilled else 1)
    grid = math.isqrt(num_patches)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    _require_keys(state, tuple(f"blocks.{i}.mlp.fc1.weight" for i in range(depth)))
    heads = _STANDARD_HEADS[embed_dim]
    head_dim = embed_dim // heads
    blocks = [
        BlockSpec(heads=heads, qk_dim=head_dim, v_dim=head_dim, attn_scale=head_dim**-0.5,
                  mlp_dim=state[f"blocks.{i}.mlp.fc1.weight"].shape[0])
        for i in range(depth)
    ]
    in_chans = patch_weight.shape[1]
    return ViTSpec(
        img_size=grid * patch_weight.shape[-1], patch_size=patch_weight.shape[-1], in_chans=in_chans,
        embed_dim=embed_dim, num_classes=state["head.weight"].shape[0], blocks=blocks,
        distilled=distilled, qkv_bias="blocks.0.attn.qkv.bias" in state,
        mean=ViTSpec.mean[:in_chans], std=ViTSpec.std[:in_chans], name="timm_checkpoint",
    )


def load_state_into(model: ViT, state: dict[str, torch.Tensor], source: str) -> ViT:
    """Copy a state dict into ``model``, with one clear error for any missing key or wrong shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = "; ".join(f"{what} {keys[:3]}" for what, keys in (("missing", missing), ("unexpected", unexpected))
                           if keys)
        raise VitDeployError(f"{source} does not match the model spec: {detail}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise VitDeployError(f"{source} does not match the model spec: {key} has shape "
                                 f"{tuple(state[key].shape)}, the spec needs {tuple(tensor.shape)}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval()


def load_timm_checkpoint(path: Path, spec: ViTSpec | None = None) -> ViT:
    """A ViT from a timm/DeiT checkpoint; the spec is inferred from the shapes unless given."""
    state = read_state_dict(path)
    spec = spec or spec_from_timm_state(state)
    return load_state_into(ViT(spec), state, str(path))


def save_artifact(model: ViT, directory: str | Path, reports: dict[str, dict] | None = None) -> Path:
    """Write ``spec.json``, ``weights.safetensors`` and any JSON ``reports`` atomically into ``directory``.

    ``reports`` maps a name from ``ARTIFACT_REPORTS`` (e.g. ``train.json``) to its content.
    """
    directory = Path(directory)
    reports = reports or {}
    unknown = set(reports) - set(ARTIFACT_REPORTS)
    if unknown:
        raise ValueError(f"unknown artifact reports {sorted(unknown)}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_dir(directory, owned_names=(SPEC_FILE, WEIGHTS_FILE, *ARTIFACT_REPORTS)) as tmp:
        (tmp / SPEC_FILE).write_text(model.spec.to_json() + "\n")
        save_file(state, str(tmp / WEIGHTS_FILE))
        for name, report in reports.items():
            (tmp / name).write_text(json.dumps(report, indent=2) + "\n")
    return directory


def load_artifact(directory: str | Path) -> ViT:
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    if not spec_path.is_file() or not weights_path.is_file():
        raise VitDeployError(f"{directory} is not a vitdeploy model: it needs {SPEC_FILE} and {WEIGHTS_FILE}")
    spec = ViTSpec.from_json(spec_path.read_text())
    return load_state_into(ViT(spec), read_state_dict(weights_path), str(weights_path))


def _require_keys(state: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise VitDeployError(f"not a timm/DeiT ViT checkpoint: missing {', '.join(missing)}")

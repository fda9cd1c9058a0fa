"""Checkpoints: timm/DeiT state dicts in, vitdeploy artifacts in and out.

A vitdeploy artifact is a directory holding ``spec.json`` and ``weights.safetensors``; it loads
with one call and never unpickles anything. timm/DeiT ``.pth``/``.pth.tar`` files are read with
``torch.load(weights_only=True)`` (which also admits the ``argparse.Namespace`` of training
checkpoints), ``.safetensors`` with safetensors.

A state dict does not reveal the head count, the pooling or the activation, so the architecture
of a checkpoint is read from what the checkpoint carries: the ``args`` of a DeiT/timm training
checkpoint, a timm ``config.json`` beside the file, or model arguments given on the command line
(in that order of precedence, lowest first). What vitdeploy's ViT does not implement (average
pooling, other activations, register tokens, ...) is refused; what had to be assumed (heads from
the width, ImageNet normalisation) is recorded in ``ViT.assumptions``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_dir, finite_json
from vitdeploy.models.spec import ACTIVATIONS, BlockSpec, ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.schema import parse, read_json_bytes, schema

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".pth.tar")
SPEC_FILE, WEIGHTS_FILE = "spec.json", "weights.safetensors"
TIMM_CONFIG_FILE = "config.json"
TIMM_HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
"""The weights of a timm hub directory, beside its config.json, in order of preference."""
ARTIFACT_REPORTS = ("train.json", "prune.json")
"""JSON reports that may live in a model directory beside its spec and weights."""
ARTIFACT_FILES = (SPEC_FILE, WEIGHTS_FILE, *ARTIFACT_REPORTS)
_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema")
# Head counts of timm's standard ViT/DeiT widths. Heads leave no trace in weight shapes, so any
# other width needs the checkpoint's config, --model-arg num_heads=N or --arch.
_STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
IMAGENET_MEAN, IMAGENET_STD = ViTSpec.mean, ViTSpec.std


@schema
@dataclass
class ModelArgs:
    """timm VisionTransformer arguments: those vitdeploy reads, checks, or may safely ignore."""

    num_heads: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    mlp_ratio: float | None = None
    patch_size: int | None = None
    img_size: int | list[int] | None = None
    in_chans: int | None = None
    num_classes: int | None = None
    qkv_bias: bool | None = None
    global_pool: str | None = None
    fc_norm: bool | None = None
    act_layer: str | None = None
    class_token: bool | None = None
    no_embed_class: bool | None = None
    reg_tokens: int | None = None
    pre_norm: bool | None = None
    qk_norm: bool | None = None
    init_values: float | None = None
    dynamic_img_size: bool | None = None
    drop_rate: float | None = None
    pos_drop_rate: float | None = None
    patch_drop_rate: float | None = None
    proj_drop_rate: float | None = None
    attn_drop_rate: float | None = None
    drop_path_rate: float | None = None
    weight_init: str | None = None

    def validate(self) -> "ModelArgs":
        """Refuse any setting vitdeploy's ViT (class-token pooling, GELU, pre-norm blocks) does not implement."""
        unsupported = {
            "global_pool": self.global_pool not in (None, "token"),
            "fc_norm": self.fc_norm is True,
            "act_layer": self.act_layer not in (None, *ACTIVATIONS),
            "class_token": self.class_token is False,
            "no_embed_class": self.no_embed_class is True,
            "reg_tokens": bool(self.reg_tokens),
            "pre_norm": self.pre_norm is True,
            "qk_norm": self.qk_norm is True,
            "init_values": self.init_values is not None,
        }
        for name, refused in unsupported.items():
            if refused:
                raise VitDeployError(f"{name}={getattr(self, name)!r}: vitdeploy's ViT implements only class-token "
                                     "pooling, GELU (exact or tanh), pre-norm blocks without layer scale, qk-norm or "
                                     "register tokens")
        for name in ("num_heads", "embed_dim", "depth", "patch_size", "in_chans", "num_classes"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) <= 1_000_000:
                raise VitDeployError(f"{name}={getattr(self, name)} is out of range")
        return self


@schema
@dataclass
class Normalisation:
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@schema
@dataclass
class TimmConfigFile:
    """timm's hub ``config.json``: the architecture and what it was created with."""

    architecture: str | None = None
    num_classes: int | None = None
    num_features: int | None = None
    global_pool: str | None = None
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrained_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)
    label_names: list[str] | None = None
    label_descriptions: dict[str, str] | None = None


@dataclass
class CheckpointConfig:
    """What a checkpoint says about its architecture besides the tensor shapes."""

    arch: str | None = None
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    norm: dict[str, Any] = dataclasses.field(default_factory=dict)
    sources: list[str] = dataclasses.field(default_factory=list)

    def merged(self, arch: str | None, model_args: dict[str, Any], norm: dict[str, Any], source: str) -> None:
        """Fold in another source, which takes precedence over what is already there."""
        self.arch = arch or self.arch
        self.model_args.update({k: v for k, v in model_args.items() if v is not None})
        self.norm.update({k: v for k, v in norm.items() if v is not None})
        self.sources.append(source)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointConfig]:
    """The tensors of a checkpoint and what it (and a timm ``config.json`` beside it) says of its architecture."""
    if not path.is_file():
        raise VitDeployError(f"{path}: not a checkpoint file" + (" (it is a directory)" if path.is_dir() else ""))
    content = _load_file(path)
    config = CheckpointConfig()
    if isinstance(content, dict):
        _merge_training_args(config, content, path)
    beside = path.parent / TIMM_CONFIG_FILE
    if beside.is_file():
        _merge_timm_config(config, beside)
    return _unwrap(content, path), config


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pth/.safetensors checkpoint, unwrapped from {'model': …} style wrappers."""
    return _unwrap(_load_file(path), path)


def spec_from_timm_state(state: dict[str, torch.Tensor], config: CheckpointConfig | None = None,
                         assumptions: list[str] | None = None) -> ViTSpec:
    """The architecture of an unpruned timm/DeiT state dict: shapes, plus what ``config`` says.

    Whatever had to be assumed (heads from the width, ImageNet mean/std) is appended to ``assumptions``.
    """
    config = config or CheckpointConfig()
    assumptions = assumptions if assumptions is not None else []
    _require_keys(state, ("cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight"))
    embed_dim = state["cls_token"].shape[-1]
    distilled = "dist_token" in state
    patch_weight = state["patch_embed.proj.weight"]
    num_patches = state["pos_embed"].shape[1] - (2 if distilled else 1)
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise VitDeployError(_not_square_message(num_patches, distilled))
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    _require_keys(state, tuple(f"blocks.{i}.mlp.fc1.weight" for i in range(depth)))
    heads = _heads(embed_dim, config, assumptions)
    _note_activation(config, assumptions)
    head_dim = embed_dim // heads
    blocks = [
        BlockSpec(heads=heads, qk_dim=head_dim, v_dim=head_dim, attn_scale=head_dim**-0.5,
                  mlp_dim=state[f"blocks.{i}.mlp.fc1.weight"].shape[0])
        for i in range(depth)
    ]
    in_chans = patch_weight.shape[1]
    _check_config_matches(config.model_args, embed_dim=embed_dim, depth=depth, num_classes=state["head.weight"].shape[0],
                          patch_size=patch_weight.shape[-1], in_chans=in_chans, img_size=grid * patch_weight.shape[-1],
                          mlp_ratio=blocks[0].mlp_dim / embed_dim if blocks else None)
    mean, std = _normalisation(in_chans, config, assumptions)
    return ViTSpec(
        img_size=grid * patch_weight.shape[-1], patch_size=patch_weight.shape[-1], in_chans=in_chans,
        embed_dim=embed_dim, num_classes=state["head.weight"].shape[0], blocks=blocks,
        distilled=distilled, qkv_bias="blocks.0.attn.qkv.bias" in state,
        mean=mean, std=std, name=config.arch or "timm_checkpoint",
        activation=config.model_args.get("act_layer") or "gelu",
    ).validate()


def load_state_into(model: ViT, state: dict[str, torch.Tensor], source: str) -> ViT:
    """Copy a state dict into ``model``, with one clear error for any missing key, wrong shape or NaN."""
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
    _require_finite(state, source)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval()


def load_timm_checkpoint(path: Path, spec: ViTSpec | None = None, model_args: dict[str, Any] | None = None) -> ViT:
    """A ViT from a timm/DeiT checkpoint; the spec is inferred from the shapes and configs unless given.

    ``model_args`` (timm VisionTransformer arguments, plus ``mean``/``std``) override the checkpoint's
    own config. The returned model's ``assumptions`` list what had to be assumed.
    """
    state, config = read_checkpoint(path)
    if model_args:
        config.merged(None, *_split_norm(model_args, "--model-arg"), "--model-arg")
    assumptions: list[str] = []
    spec = spec or spec_from_timm_state(state, config, assumptions)
    model = load_state_into(ViT(spec), state, str(path))
    model.assumptions = assumptions
    return model


def save_artifact(model: ViT, directory: str | Path, reports: dict[str, dict] | None = None) -> Path:
    """Write ``spec.json``, ``weights.safetensors`` and any JSON ``reports`` atomically into ``directory``.

    ``reports`` maps a name from ``ARTIFACT_REPORTS`` (e.g. ``train.json``) to its content. A model
    with NaN/Inf weights or a report with NaN/Inf values is refused: nothing is written.
    """
    directory = Path(directory)
    reports = reports or {}
    unknown = set(reports) - set(ARTIFACT_REPORTS)
    if unknown:
        raise ValueError(f"unknown artifact reports {sorted(unknown)}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _require_finite(state, f"the model for {directory}")
    texts = {name: finite_json(report, f"{directory}/{name}") for name, report in reports.items()}
    with atomic_dir(directory, owned_names=ARTIFACT_FILES) as tmp:
        (tmp / SPEC_FILE).write_text(model.spec.to_json() + "\n")
        save_file(state, str(tmp / WEIGHTS_FILE))
        for name, text in texts.items():
            (tmp / name).write_text(text)
    return directory


def load_artifact(directory: str | Path) -> ViT:
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    if not spec_path.is_file() or not weights_path.is_file():
        raise VitDeployError(f"{directory} is not a vitdeploy model: it needs {SPEC_FILE} and {WEIGHTS_FILE}")
    spec = ViTSpec.from_json(read_json_bytes(spec_path), where=str(spec_path))
    return load_state_into(ViT(spec), read_state_dict(weights_path), str(weights_path))


def _load_file(path: Path) -> Any:
    """The raw content of a checkpoint file: never unpickles anything but tensors, containers and Namespace."""
    try:
        if path.name.endswith(".safetensors"):
            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise VitDeployError(_refusal(path, str(exc))) from None
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError,
            IndexError, TypeError, AttributeError, UnicodeDecodeError, MemoryError, OverflowError) as exc:
        raise VitDeployError(f"{path}: not a readable checkpoint (truncated, or not a PyTorch/safetensors file: "
                             f"{type(exc).__name__})") from None


def _refusal(path: Path, message: str) -> str:
    """One line for a pickle that holds more than tensors, with what to do instead."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    what = f"it holds a Python object ({found.group(1)})" if found else "it is not a plain pickle of tensors"
    return (f"{path}: not a readable checkpoint: {what}, and vitdeploy unpickles only tensors; re-save the weights "
            "alone, e.g. torch.save(ckpt['model'], 'weights.pth') or safetensors.torch.save_file")


def _unwrap(content: Any, path: Path) -> dict[str, torch.Tensor]:
    state = content
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                          for k, v in state.items()):
        raise VitDeployError(f"{path}: expected a state dict of tensors (or one under 'model' / 'state_dict')")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _merge_training_args(config: CheckpointConfig, content: dict, path: Path) -> None:
    """Fold in the ``args`` (argparse.Namespace or dict) and ``arch`` of a DeiT/timm training checkpoint."""
    args = content.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    kwargs = args.get("model_kwargs")
    model_args = dict(kwargs) if isinstance(kwargs, dict) else {}
    if args.get("gp") is not None:
        model_args["global_pool"] = args["gp"]
    where = f"{path}: training args"
    checked = _parse_model_args(model_args, where)
    norm = _parse_norm({k: args.get(k) for k in ("mean", "std")}, where)
    arch = content.get("arch") or args.get("model")
    if args or content.get("arch"):
        config.merged(arch if isinstance(arch, str) else None, checked, norm, "training args")


def _merge_timm_config(config: CheckpointConfig, path: Path) -> None:
    """Fold in a timm hub ``config.json`` (architecture, model_args, pretrained_cfg mean/std)."""
    file = parse(TimmConfigFile, read_json_bytes(path), str(path))
    model_args = dict(file.model_args)
    if file.global_pool is not None:
        model_args["global_pool"] = file.global_pool
    checked = _parse_model_args(model_args, str(path))
    norm = _parse_norm({k: file.pretrained_cfg.get(k) for k in ("mean", "std")}, f"{path}: pretrained_cfg")
    config.merged(file.architecture, checked, norm, str(path))


def normalisation_args(values: dict[str, Any], where: str) -> dict[str, Any]:
    """The checked mean/std among model arguments given by the user."""
    return _parse_norm({k: values.get(k) for k in ("mean", "std")}, where)


def _split_norm(values: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model arguments given by the user: the ViT's (checked) and the normalisation's."""
    norm = normalisation_args(values, where)
    return _parse_model_args({k: v for k, v in values.items() if k not in ("mean", "std")}, where), norm


def _parse_model_args(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` checked against ``ModelArgs``: types, unknown names, what the ViT implements."""
    try:
        parsed = parse(ModelArgs, values, where)
    except VitDeployError as exc:
        raise VitDeployError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    return {k: v for k, v in dataclasses.asdict(parsed).items() if v is not None}


def _parse_norm(values: dict[str, Any], where: str) -> dict[str, Any]:
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}
    norm = parse(Normalisation, values, where)
    if norm.std is not None and min(norm.std, default=1) <= 0:
        raise VitDeployError(f"{where}: std must be positive")
    return {k: v for k, v in dataclasses.asdict(norm).items() if v is not None}


def _registered(arch: str | None) -> ViTSpec | None:
    """The registered spec of ``arch`` (a timm name, with or without a ``.tag``), if there is one."""
    from vitdeploy.models.architectures import ARCHITECTURES, get_spec

    name = (arch or "").split(".")[0]
    return get_spec(name) if name in ARCHITECTURES.names() else None


def _heads(embed_dim: int, config: CheckpointConfig, assumptions: list[str]) -> int:
    registered = _registered(config.arch)
    heads = config.model_args.get("num_heads")
    if heads is None and registered is not None and registered.embed_dim == embed_dim:
        heads = registered.blocks[0].heads
    if heads is None and embed_dim in _STANDARD_HEADS:
        heads = _STANDARD_HEADS[embed_dim]
        assumptions.append(f"num_heads={heads} assumed (timm's standard for width {embed_dim}); if it was trained "
                           "otherwise pass --model-arg num_heads=N")
    if heads is None:
        raise VitDeployError(f"cannot infer the head count for embed dim {embed_dim} (not a standard DeiT/ViT width); "
                             "pass --arch NAME or --model-arg num_heads=N")
    if embed_dim % heads:
        raise VitDeployError(f"num_heads={heads} does not divide the checkpoint's embed dim {embed_dim}")
    if config.model_args.get("global_pool") is None and registered is None:
        assumptions.append("class-token pooling assumed (global_pool='token'); average-pooled models are "
                           "not supported")
    return heads


def _note_activation(config: CheckpointConfig, assumptions: list[str]) -> None:
    """Say that GELU was assumed when nothing names the activation (a weight shape cannot show it)."""
    if config.model_args.get("act_layer") is None and _registered(config.arch) is None:
        assumptions.append("GELU (exact, erf) assumed; a model trained with the tanh approximation would give "
                           "slightly different logits: pass --model-arg act_layer=gelu_tanh for it")


def _check_config_matches(model_args: dict[str, Any], **actual: Any) -> None:
    """Refuse a config that contradicts the weights' shapes (it belongs to another model)."""
    for name, value in actual.items():
        if _contradicts(model_args.get(name), value):
            raise VitDeployError(f"the checkpoint's config says {name}={model_args[name]!r} but its weights have "
                                 f"{value!r}; it belongs to another model")


def _contradicts(given: Any, value: Any) -> bool:
    if isinstance(given, list) and len(set(given)) == 1:  # timm's (height, width) img_size
        given = given[0]
    if given is None or value is None:
        return False
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        return not math.isclose(given, value, rel_tol=1e-3)
    return given != value


def _normalisation(in_chans: int, config: CheckpointConfig,
                   assumptions: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    registered = _registered(config.arch)
    if "mean" in config.norm and "std" in config.norm:
        return tuple(config.norm["mean"]), tuple(config.norm["std"])
    if registered is not None and registered.in_chans == in_chans:
        return registered.mean, registered.std
    assumptions.append("ImageNet mean/std assumed (no normalisation in the checkpoint's config); "
                       "pass --model-arg mean=[...] --model-arg std=[...] if it was trained otherwise")
    return IMAGENET_MEAN[:in_chans], IMAGENET_STD[:in_chans]


def _not_square_message(positions: int, distilled: bool) -> str:
    """Why ``pos_embed`` does not hold one position per prefix token and patch: register tokens or
    no position for the class token (timm's ``reg_tokens``, ``no_embed_class``), when the count says so."""
    prefix = 2 if distilled else 1
    total = positions + prefix
    if math.isqrt(total) ** 2 == total:
        return (f"pos_embed holds {total} positions, a square patch grid with no class-token position "
                "(timm's no_embed_class=True): vitdeploy's ViT gives the class token a position, so it cannot run "
                "this model")
    for extra in range(1, min(17, positions)):
        if math.isqrt(positions - extra) ** 2 == positions - extra:
            return (f"pos_embed holds {positions} patch positions: {positions - extra} patches plus {extra} more "
                    f"tokens, as register tokens (timm's reg_tokens) would; vitdeploy's ViT has no register tokens")
    return f"not a square patch grid: pos_embed holds {positions} patch positions"


def _require_finite(state: dict[str, torch.Tensor], source: str) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise VitDeployError(f"{source}: {key} holds NaN or infinite values; the model is unusable")


def _require_keys(state: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise VitDeployError(f"not a timm/DeiT ViT checkpoint: missing {', '.join(missing)}")

"""Hugging Face ``transformers`` ViT and DeiT checkpoints in, without importing ``transformers``.

A Hugging Face model directory holds ``config.json`` (``model_type`` "vit" or "deit") and its
weights: ``model.safetensors``, shards listed in ``model.safetensors.index.json``, or
``pytorch_model.bin`` (read as tensors only). Three classes load:

* ``ViTForImageClassification``: the class token's logits;
* ``DeiTForImageClassification``: a distillation token, but the class token's logits alone;
* ``DeiTForImageClassificationWithTeacher``: the mean of the class and distillation heads.

The config decides heads, widths, depth, image and patch size, LayerNorm eps, activation and
labels (``id2label``); ``preprocessor_config.json`` decides the input normalisation. Both key
layouts load: the Hub's (``vit.encoder.layer.N.attention.attention.query``, which
``save_pretrained`` writes) and transformers 5's in-memory one (``vit.layers.N.attention.q_proj``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_dir
from vitdeploy.models.checkpoint import load_state_into, read_state_dict
from vitdeploy.models.spec import BlockSpec, ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.schema import foreign_schema, parse, read_json_bytes

CONFIG_FILE, PREPROCESSOR_FILE = "config.json", "preprocessor_config.json"
SAFETENSORS_FILE, SHARD_INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
MODEL_TYPES = ("vit", "deit")


@dataclass(frozen=True)
class ClassifierLayout:
    """How one ``transformers`` class turns final tokens into logits."""

    model_type: str
    heads: dict[str, str]
    """Its head's weight prefix → vitdeploy's (``head``, ``head_dist``)."""
    distilled: bool = False

    @property
    def dist_head(self) -> bool:
        """``ViTSpec.dist_head``: False only for a distillation token without a head."""
        return not self.distilled or "head_dist" in self.heads.values()


CLASSES = {
    "ViTForImageClassification": ClassifierLayout("vit", {"classifier": "head"}),
    "DeiTForImageClassification": ClassifierLayout("deit", {"classifier": "head"}, distilled=True),
    "DeiTForImageClassificationWithTeacher": ClassifierLayout(
        "deit", {"cls_classifier": "head", "distillation_classifier": "head_dist"}, distilled=True),
}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
"""``hidden_act`` → vitdeploy's activation (the last three are the same tanh approximation)."""
PROCESSOR_DEFAULT_NORMALISATION = {
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "deit": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""Mean/std of ``ViTImageProcessor`` and ``DeiTImageProcessor`` when they are not configured."""

HUB, TRANSFORMERS_5 = 0, 1
"""The two key layouts: the Hub's, which ``save_pretrained`` writes, and transformers 5's in-memory one."""
_BLOCK_PREFIXES = ("encoder.layer", "layers")
_BLOCK_NAMES = {  # vitdeploy's name inside block N → (Hub layout, transformers 5 layout)
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "attn.q": ("attention.attention.query", "attention.q_proj"),
    "attn.k": ("attention.attention.key", "attention.k_proj"),
    "attn.v": ("attention.attention.value", "attention.v_proj"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp.fc2": ("output.dense", "mlp.fc2"),
}
_MODEL_NAMES = {  # vitdeploy's name → the Hub's, under the "vit."/"deit." prefix
    "cls_token": "embeddings.cls_token",
    "dist_token": "embeddings.distillation_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_BLOCK_KEY = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)")


@foreign_schema
@dataclass
class HFConfig:
    """The fields of a ``ViTConfig``/``DeiTConfig`` that shape the network (defaults: transformers')."""

    model_type: str
    architectures: list[str] | None = None
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: int | list[int] = 224
    patch_size: int | list[int] = 16
    num_channels: int = 3
    qkv_bias: bool = True
    id2label: dict[str, str] | None = None

    def validate(self) -> "HFConfig":
        _refuse_unless(self.model_type in MODEL_TYPES, "model_type", self.model_type,
                       f"vitdeploy reads {' and '.join(MODEL_TYPES)} models")
        for name in self.architectures or []:
            _refuse_unless(name in CLASSES, "architectures", self.architectures,
                           f"vitdeploy reads {', '.join(CLASSES)}")
        _refuse_unless(self.hidden_act in ACTIVATIONS, "hidden_act", self.hidden_act,
                       f"vitdeploy's ViT implements {', '.join(ACTIVATIONS)}")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels"):
            _refuse_unless(0 < getattr(self, name) <= 1_000_000, name, getattr(self, name), "out of range")
        _refuse_unless(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                       self.num_attention_heads, f"it does not divide hidden_size={self.hidden_size}")
        for name in ("image_size", "patch_size"):
            _refuse_unless(len(_sizes(getattr(self, name))) == 1, name, getattr(self, name),
                           "vitdeploy's ViT takes square images and patches")
        _refuse_unless(0 < self.layer_norm_eps < 1, "layer_norm_eps", self.layer_norm_eps, "out of range")
        _refuse_unless(sorted(self.id2label or {}) == sorted(map(str, range(len(self.id2label or {})))), "id2label",
                       list(self.id2label or {})[:3], "its keys must be the class indices 0..N-1")
        return self

    @property
    def labels(self) -> list[str] | None:
        """``id2label`` as a list by class index (None when the config has none)."""
        return [self.id2label[str(i)] for i in range(len(self.id2label))] if self.id2label else None


@foreign_schema
@dataclass
class PreprocessorConfig:
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    do_normalize: bool = True


def is_hf_directory(path: Path) -> bool:
    """True for a directory whose ``config.json`` names a ``transformers`` ``model_type``."""
    try:
        config = json.loads(read_json_bytes(path / CONFIG_FILE))
    except (VitDeployError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def load_hf_model(directory: Path, normalisation: dict[str, Any] | None = None) -> ViT:
    """A ViT from a Hugging Face ViT/DeiT directory; ``normalisation`` (mean/std) overrides its
    preprocessor config. The returned model's ``assumptions`` list what had to be assumed."""
    config = parse(HFConfig, read_json_bytes(directory / CONFIG_FILE), str(directory / CONFIG_FILE))
    state = _read_weights(directory)
    layout = _classifier_layout(config, state, directory)
    assumptions: list[str] = []
    mean, std = _normalisation(directory, config, normalisation or {}, assumptions)
    spec = _spec(config, layout, state, directory.name, mean, std)
    model = ViT(spec)
    load_state_into(model, vitdeploy_state(state, config.model_type, layout), str(directory))
    model.assumptions = assumptions
    return model


def vitdeploy_state(state: dict[str, torch.Tensor], model_type: str,
                    layout: ClassifierLayout) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict under vitdeploy's (timm's) names, q/k/v fused into ``qkv``.
    Keys it does not know keep their names, so loading reports them as unexpected."""
    from_hub = {hub: ours for ours, hub in _MODEL_NAMES.items()}
    renamed = {}
    for key, tensor in state.items():
        head, _, rest = key.partition(".")
        inner = key.removeprefix(f"{model_type}.")
        block = _BLOCK_KEY.fullmatch(inner)
        if head in layout.heads:
            key = f"{layout.heads[head]}.{rest}"
        elif inner in from_hub:
            key = from_hub[inner]
        elif block is not None:
            key = _block_key(*block.groups()) or key
        renamed[key] = tensor
    return _fuse_qkv(renamed)


def _block_key(index: str, name: str, kind: str) -> str | None:
    for ours, names in _BLOCK_NAMES.items():
        if name in names:
            return f"blocks.{index}.{ours}.{kind}"
    return None


def _fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fused = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"(blocks\.\d+\.attn)\.([qkv])\.(weight|bias)", key)
        if match is None:
            fused[key] = tensor
        elif match.group(2) == "q":
            prefix, kind = match.group(1), match.group(3)
            parts = [state.get(f"{prefix}.{name}.{kind}") for name in "qkv"]
            if any(part is None for part in parts):
                raise VitDeployError(f"{prefix}: the checkpoint holds query {kind} but not key and value {kind}")
            fused[f"{prefix}.qkv.{kind}"] = torch.cat(parts, dim=0)
    return fused


def _classifier_layout(config: HFConfig, state: dict[str, torch.Tensor], directory: Path) -> ClassifierLayout:
    """The class the weights belong to: named by ``architectures``, else told by its head's keys."""
    named = [CLASSES[name] for name in config.architectures or []]
    found = [layout for layout in CLASSES.values() if layout.model_type == config.model_type
             and all(f"{prefix}.weight" in state for prefix in layout.heads)]
    layout = named[0] if named else (found[0] if found else None)
    if layout is None or layout not in found:
        classes = ", ".join(name for name, c in CLASSES.items() if c.model_type == config.model_type)
        raise VitDeployError(f"{directory}: no image-classification head in the weights for {classes} (a base "
                             "ViTModel or pre-training checkpoint): vitdeploy prunes and exports classifiers")
    return layout


def _spec(config: HFConfig, layout: ClassifierLayout, state: dict[str, torch.Tensor], name: str,
          mean: tuple[float, ...], std: tuple[float, ...]) -> ViTSpec:
    head_dim = config.hidden_size // config.num_attention_heads
    blocks = [BlockSpec(heads=config.num_attention_heads, qk_dim=head_dim, v_dim=head_dim,
                        mlp_dim=config.intermediate_size, attn_scale=head_dim**-0.5)
              for _ in range(config.num_hidden_layers)]
    head_weight = state[f"{next(iter(layout.heads))}.weight"]
    return ViTSpec(
        img_size=_sizes(config.image_size).pop(), patch_size=_sizes(config.patch_size).pop(),
        in_chans=config.num_channels, embed_dim=config.hidden_size, num_classes=head_weight.shape[0],
        blocks=blocks, distilled=layout.distilled, dist_head=layout.dist_head,
        qkv_bias=config.qkv_bias, norm_eps=config.layer_norm_eps, mean=mean, std=std, name=name,
        activation=ACTIVATIONS[config.hidden_act], labels=config.labels,
    ).validate()


def _sizes(size: int | list[int]) -> set[int]:
    return {size} if isinstance(size, int) else set(size)


def _normalisation(directory: Path, config: HFConfig, given: dict[str, Any],
                   assumptions: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if "mean" in given and "std" in given:
        return tuple(given["mean"]), tuple(given["std"])
    path = directory / PREPROCESSOR_FILE
    if path.is_file():
        processor = parse(PreprocessorConfig, read_json_bytes(path), str(path))
        if not processor.do_normalize:
            return (0.0,) * config.num_channels, (1.0,) * config.num_channels
        if processor.image_mean is not None and processor.image_std is not None:
            if min(processor.image_std) <= 0:
                raise VitDeployError(f"{path}: image_std must be positive")
            return tuple(processor.image_mean), tuple(processor.image_std)
    mean, std = PROCESSOR_DEFAULT_NORMALISATION[config.model_type]
    assumptions.append(f"mean={list(mean)} std={list(std)} assumed (the {config.model_type} image processor's "
                       f"default; no {PREPROCESSOR_FILE} names them); pass --model-arg mean=[...] "
                       "--model-arg std=[...] if it was trained otherwise")
    return mean[:config.num_channels], std[:config.num_channels]


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / SAFETENSORS_FILE).is_file():
        return read_state_dict(directory / SAFETENSORS_FILE)
    if (directory / SHARD_INDEX_FILE).is_file():
        return _read_shards(directory)
    if (directory / PICKLE_FILE).is_file():
        return read_state_dict(directory / PICKLE_FILE)
    raise VitDeployError(f"{directory}: a Hugging Face model directory needs its weights: {SAFETENSORS_FILE}, "
                         f"{SHARD_INDEX_FILE} or {PICKLE_FILE}")


def _read_shards(directory: Path) -> dict[str, torch.Tensor]:
    index_path = directory / SHARD_INDEX_FILE
    try:
        weight_map = json.loads(read_json_bytes(index_path))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise VitDeployError(f"{index_path}: not a shard index (it needs a weight_map of tensor → file)") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise VitDeployError(f"{index_path}: shard {shard!r} is not a file name in {directory}")
        state.update(read_state_dict(directory / shard))
    return state


def _refuse_unless(condition: bool, field: str, value: Any, reason: str) -> None:
    if not condition:
        raise VitDeployError(f"{field}={value!r}: {reason}")


HF_FILES = (CONFIG_FILE, PREPROCESSOR_FILE, SAFETENSORS_FILE)
"""What ``save_hf_directory`` writes (and so may replace)."""
HF_ACTIVATION_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def save_hf_directory(model: ViT, directory: str | Path) -> None:
    """Write ``model`` as a Hugging Face directory in the Hub's layout, which ``transformers``
    loads; a model that transformers' ViT cannot express (NViT widths, token plans) is refused.
    The files are read back before they replace anything: the logits must be identical."""
    spec = model.spec
    _require_expressible(spec)
    class_name = next(name for name, layout in CLASSES.items()
                      if (layout.distilled, layout.dist_head) == (spec.distilled, spec.dist_head))
    layout = CLASSES[class_name]
    state = _hub_state(model.state_dict(), layout)
    with atomic_dir(directory, owned_names=HF_FILES) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(_hf_config(spec, class_name, layout), indent=2) + "\n")
        (tmp / PREPROCESSOR_FILE).write_text(json.dumps(_hf_processor(spec), indent=2) + "\n")
        save_file(state, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        _require_identical_read_back(model, tmp, directory)


def _require_identical_read_back(model: ViT, written: Path, directory: str | Path) -> None:
    example = torch.randn(2, model.spec.in_chans, model.spec.img_size, model.spec.img_size)
    with torch.no_grad():
        diff = float((load_hf_model(written)(example) - model.eval()(example)).abs().max())
    if not diff == 0.0:
        raise VitDeployError(f"{directory}: read back, the Hugging Face model's logits differ by {diff:.3g}; "
                             "nothing was written")


def _require_expressible(spec: ViTSpec) -> None:
    if any(block.tokens.active for block in spec.blocks):
        raise VitDeployError("transformers' ViT keeps every token, and this model has a token plan: export it "
                             "to ONNX instead")
    first = spec.blocks[0]
    uniform = all((b.heads, b.qk_dim, b.v_dim, b.mlp_dim, b.scale) == (first.heads, first.qk_dim, first.v_dim,
                                                                    first.mlp_dim, first.scale) for b in spec.blocks)
    if not (uniform and first.qk_dim == first.v_dim and first.heads * first.qk_dim == spec.embed_dim
            and math.isclose(first.scale, first.qk_dim**-0.5)):
        raise VitDeployError("transformers' ViTConfig gives every layer the same heads and widths, with heads × "
                             "head dim = hidden size; this model's blocks differ (NViT-pruned): export it to ONNX "
                             "instead")


def _hub_state(state: dict[str, torch.Tensor], layout: ClassifierLayout) -> dict[str, torch.Tensor]:
    to_head = {ours: theirs for theirs, ours in layout.heads.items()}
    prefix = layout.model_type
    hub = {}
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous().cpu()
        head, _, rest = key.partition(".")
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if head in to_head:
            hub[f"{to_head[head]}.{rest}"] = tensor
        elif key in _MODEL_NAMES:
            hub[f"{prefix}.{_MODEL_NAMES[key]}"] = tensor
        elif block is not None and block.group(2) == "attn.qkv":
            for name, part in zip(("attn.q", "attn.k", "attn.v"), tensor.chunk(3, dim=0)):
                hub[_hub_block_key(prefix, block.group(1), name, block.group(3))] = part.contiguous()
        else:
            hub[_hub_block_key(prefix, *block.groups())] = tensor
    return hub


def _hub_block_key(prefix: str, index: str, name: str, kind: str) -> str:
    return f"{prefix}.{_BLOCK_PREFIXES[HUB]}.{index}.{_BLOCK_NAMES[name][HUB]}.{kind}"


def _hf_config(spec: ViTSpec, class_name: str, layout: ClassifierLayout) -> dict[str, Any]:
    labels = spec.labels or [f"LABEL_{i}" for i in range(spec.num_classes)]
    return {
        "architectures": [class_name], "model_type": layout.model_type,
        "hidden_size": spec.embed_dim, "num_hidden_layers": spec.depth,
        "num_attention_heads": spec.blocks[0].heads, "intermediate_size": spec.blocks[0].mlp_dim,
        "hidden_act": HF_ACTIVATION_NAMES[spec.activation], "layer_norm_eps": spec.norm_eps,
        "image_size": spec.img_size, "patch_size": spec.patch_size, "encoder_stride": spec.patch_size,
        "num_channels": spec.in_chans, "qkv_bias": spec.qkv_bias,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _hf_processor(spec: ViTSpec) -> dict[str, Any]:
    return {
        "image_processor_type": "ViTImageProcessor", "do_resize": True,
        "size": {"height": spec.img_size, "width": spec.img_size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(spec.mean), "image_std": list(spec.std),
    }

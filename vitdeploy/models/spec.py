"""The model spec: one dataclass that describes a (possibly pruned) ViT completely.

Every stage reads or writes a ``ViTSpec``. Each block carries its own dims (NViT pruning makes
them differ per block) and its own token step (how many patch tokens survive after the block and
how they are chosen), so every tensor shape in the network is known statically.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from vitdeploy.errors import VitDeployError

SELECTORS = ("none", "fixed", "cls_attn")
"""How a block's surviving tokens are chosen: ``none`` keeps all, ``fixed`` keeps constant
positions, ``cls_attn`` ranks patch tokens by the class token's attention (see
``vitdeploy.tokens``)."""

SPARSITY_PATTERNS = (None, "2:4")
SELECTION_METHODS = ("topk", "rank")
"""How a scored token step is realised: TopK with a static k, or a sort-free rank selection."""


@dataclass
class TokenStep:
    """What happens to the patch tokens after a block.

    ``keep`` is the number of *patch* tokens that survive (class/distillation tokens and package
    tokens are always kept and not counted). ``positions`` lists the surviving indices for the
    ``fixed`` selector, relative to the patch tokens entering the step. ``package`` folds the
    dropped tokens into one score-weighted package token (SPViT).
    """

    keep: int | None = None
    selector: str = "none"
    positions: list[int] | None = None
    package: bool = False

    @property
    def active(self) -> bool:
        return self.keep is not None

    @property
    def scored(self) -> bool:
        """True when the step ranks tokens by a score (everything but constant positions)."""
        return self.active and self.selector != "fixed"


@dataclass
class BlockSpec:
    """One transformer block. ``qk_dim`` and ``v_dim`` are per head."""

    heads: int
    qk_dim: int
    v_dim: int
    mlp_dim: int
    attn_scale: float | None = None
    tokens: TokenStep = field(default_factory=TokenStep)

    @property
    def scale(self) -> float:
        """Softmax scale. Specs record the unpruned model's scale, so pruning QK dims keeps it."""
        return self.attn_scale if self.attn_scale is not None else self.qk_dim**-0.5


@dataclass
class ViTSpec:
    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    num_classes: int
    blocks: list[BlockSpec]
    distilled: bool = False
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    sparsity: str | None = None
    name: str = "vit"

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def num_prefix_tokens(self) -> int:
        """Class token, plus the distillation token for distilled models."""
        return 2 if self.distilled else 1

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def patch_tokens_entering(self) -> list[int]:
        """Number of patch tokens entering each block (before its own token step)."""
        counts, n = [], self.num_patches
        for block in self.blocks:
            counts.append(n)
            if block.tokens.active:
                n = block.tokens.keep
        return counts

    def package_tokens_entering(self) -> list[int]:
        """Number of package tokens entering each block (each packaging step adds one)."""
        counts, n = [], 0
        for block in self.blocks:
            counts.append(n)
            if block.tokens.active and block.tokens.package:
                n += 1
        return counts

    def tokens_entering(self) -> list[int]:
        """Total sequence length entering each block: prefix + patch + package tokens."""
        return [
            self.num_prefix_tokens + patches + packages
            for patches, packages in zip(self.patch_tokens_entering(), self.package_tokens_entering())
        ]

    def validate(self) -> "ViTSpec":
        """Raise ``VitDeployError`` on any inconsistency; return self for chaining."""
        _require(self.img_size > 0 and self.patch_size > 0, "img_size and patch_size must be positive")
        _require(
            self.img_size % self.patch_size == 0,
            f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}",
        )
        _require(self.embed_dim > 0 and self.num_classes > 0 and self.in_chans > 0,
                 "embed_dim, num_classes and in_chans must be positive")
        _require(len(self.blocks) > 0, "a ViT needs at least one block")
        _require(len(self.mean) == self.in_chans and len(self.std) == self.in_chans,
                 f"mean/std need {self.in_chans} values, one per input channel")
        _require(self.sparsity in SPARSITY_PATTERNS,
                 f"unknown sparsity {self.sparsity!r}: choose one of {SPARSITY_PATTERNS}")
        _require(_is_count(self.img_size, self.patch_size, self.in_chans, self.embed_dim, self.num_classes),
                 "img_size, patch_size, in_chans, embed_dim and num_classes must be whole numbers")
        entering = self.patch_tokens_entering()
        for index, (block, n_in) in enumerate(zip(self.blocks, entering), start=1):
            _validate_block(block, index, n_in)
        _require(not self.blocks[-1].tokens.active,
                 f"block {self.depth} is the last block: the head reads only the class token, so dropping "
                 "tokens after it changes nothing")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViTSpec":
        try:
            fields = dict(data)
            fields["blocks"] = [_block_from_dict(b) for b in fields["blocks"]]
            fields["mean"] = tuple(fields.get("mean", cls.mean))
            fields["std"] = tuple(fields.get("std", cls.std))
            return cls(**fields).validate()
        except (KeyError, TypeError) as exc:
            raise VitDeployError(f"invalid model spec: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "ViTSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VitDeployError(f"model spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def with_token_plan(self, plan: dict[int, "TokenStep"]) -> "ViTSpec":
        """A copy whose blocks (0-based index → step) get the given token steps."""
        for index in plan:
            _require(0 <= index < self.depth,
                     f"block {index + 1} does not exist: the model has blocks 1..{self.depth}")
        spec = dataclasses.replace(
            self,
            blocks=[
                dataclasses.replace(b, tokens=plan.get(i, TokenStep()))
                for i, b in enumerate(self.blocks)
            ],
        )
        return spec.validate()


def uniform_blocks(depth: int, embed_dim: int, heads: int, mlp_ratio: float = 4.0) -> list[BlockSpec]:
    """The blocks of an unpruned ViT: every block identical, head dim = embed_dim / heads."""
    if embed_dim % heads:
        raise VitDeployError(f"embed_dim {embed_dim} is not divisible by {heads} heads")
    head_dim = embed_dim // heads
    mlp_dim = int(round(embed_dim * mlp_ratio))
    return [BlockSpec(heads=heads, qk_dim=head_dim, v_dim=head_dim, mlp_dim=mlp_dim, attn_scale=head_dim**-0.5)
            for _ in range(depth)]


def _validate_block(block: BlockSpec, index: int, n_in: int) -> None:
    dims = (block.heads, block.qk_dim, block.v_dim, block.mlp_dim)
    _require(_is_count(*dims) and min(dims) > 0,
             f"block {index}: heads, qk_dim, v_dim and mlp_dim must be positive whole numbers")
    step = block.tokens
    _require(step.selector in SELECTORS,
             f"block {index}: unknown token selector {step.selector!r}; choose one of {SELECTORS}")
    if not step.active:
        _require(step.selector == "none" and not step.package and step.positions is None,
                 f"block {index}: a token selector or package token needs a keep count")
        return
    _require(step.selector != "none", f"block {index}: keep={step.keep} needs a token selector")
    _require(_is_count(step.keep) and 1 <= step.keep < n_in,
             f"block {index}: keep={step.keep} must be a whole number in 1..{n_in - 1} (fewer than the "
             f"{n_in} patch tokens entering it)")
    if step.selector == "fixed":
        positions = step.positions or []
        _require(len(positions) == step.keep,
                 f"block {index}: fixed selector lists {len(positions)} positions but keep={step.keep}")
        _require(len(set(positions)) == len(positions) and all(0 <= p < n_in for p in positions),
                 f"block {index}: fixed positions must be distinct indices in 0..{n_in - 1}")
        _require(not step.package, f"block {index}: a fixed selector has no scores for a package token")
    else:
        _require(step.positions is None, f"block {index}: only the fixed selector takes positions")


def _block_from_dict(data: dict[str, Any]) -> BlockSpec:
    fields = dict(data)
    fields["tokens"] = TokenStep(**fields.get("tokens", {}))
    return BlockSpec(**fields)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise VitDeployError(message)


def _is_count(*values: object) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)

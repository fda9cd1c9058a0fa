"""The model spec: one dataclass that describes a (possibly pruned) ViT completely.

Every stage reads or writes a ``ViTSpec``. Each block carries its own dims (NViT pruning makes
them differ per block) and its own token step (how many patch tokens survive after the block and
how they are chosen), so every tensor shape in the network is known statically.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from vitdeploy.errors import VitDeployError

SELECTORS = ("none", "fixed", "cls_attn", "star", "spvit")
"""How a block's surviving tokens are chosen: ``none`` keeps all, ``fixed`` keeps constant
positions, ``cls_attn`` ranks patch tokens by the class token's attention, ``star`` by STAR's
fusion of that attention with offline per-position scores, ``spvit`` by a learned SPViT
selector inside the block (see ``vitdeploy.tokens``)."""
PACKAGE_MODES = ("concat", "add")
"""What a step's new package token does when earlier steps left one: sit beside it, or be added
to the last one (SPViT's one-token variant)."""

SPARSITY_PATTERNS = (None, "2:4")
SELECTION_METHODS = ("topk", "rank")
"""How a scored token step is realised: TopK with a static k, or a sort-free rank selection."""


@dataclass
class TokenStep:
    """What happens to the patch tokens after a block.

    ``keep`` is the number of *patch* tokens that survive (class/distillation tokens and package
    tokens are always kept and not counted). ``positions`` lists the surviving indices for the
    ``fixed`` selector, relative to the patch tokens entering the step. ``package`` folds the
    dropped tokens into one score-weighted package token (SPViT); ``package_mode`` says whether
    it joins earlier package tokens (``concat``) or is added to the last of them (``add``).

    The ``star`` selector ranks by ``S_intra^alpha · S_inter^(1 − alpha)``: S_intra is the class
    token's attention, S_inter (``inter_scores``) an offline score per *original* patch position
    (the model tracks where each surviving token came from). With ``adaptive_rate`` (a-STAR) a
    sample keeps the fewest tokens whose normalised fused scores sum to at least that rate; the
    count then depends on the input, ``keep`` is only its upper bound, and the model cannot be
    exported as a static graph.
    """

    keep: int | None = None
    selector: str = "none"
    positions: list[int] | None = None
    package: bool = False
    package_mode: str = "concat"
    selector_heads: int | None = None
    """``spvit``: heads of the learned selector (None = the block's head count)."""
    alpha: float | None = None
    inter_scores: list[float] | None = None
    adaptive_rate: float | None = None

    @property
    def active(self) -> bool:
        return self.keep is not None

    @property
    def scored(self) -> bool:
        """True when the step ranks tokens by a score (everything but constant positions)."""
        return self.active and self.selector != "fixed"

    @property
    def adaptive(self) -> bool:
        return self.adaptive_rate is not None


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
                n = max(n, 1) if block.tokens.package_mode == "add" else n + 1
        return counts

    def tokens_entering(self) -> list[int]:
        """Total sequence length entering each block: prefix + patch + package tokens."""
        return [
            self.num_prefix_tokens + patches + packages
            for patches, packages in zip(self.patch_tokens_entering(), self.package_tokens_entering())
        ]

    @property
    def adaptive(self) -> bool:
        """True when some token step keeps an input-dependent number of tokens (a-STAR)."""
        return any(b.tokens.adaptive for b in self.blocks)

    @property
    def tracks_patch_positions(self) -> bool:
        """True when a step needs each token's original patch position (STAR's offline scores)."""
        return any(b.tokens.selector == "star" for b in self.blocks)

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
            _validate_block(block, index, n_in, self.num_patches)
            heads = block.tokens.selector_heads or block.heads
            _require(block.tokens.selector != "spvit" or self.embed_dim % heads == 0,
                     f"block {index}: the SPViT selector splits embed_dim {self.embed_dim} into {heads} heads, "
                     "which must divide it")
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

    def static_counterpart(self) -> "ViTSpec":
        """The spec with every a-STAR step made static: STAR keeping its upper-bound count."""
        return dataclasses.replace(self, blocks=[
            dataclasses.replace(b, tokens=dataclasses.replace(b.tokens, adaptive_rate=None)) for b in self.blocks
        ]).validate()

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


def _validate_block(block: BlockSpec, index: int, n_in: int, num_patches: int) -> None:
    dims = (block.heads, block.qk_dim, block.v_dim, block.mlp_dim)
    _require(_is_count(*dims) and min(dims) > 0,
             f"block {index}: heads, qk_dim, v_dim and mlp_dim must be positive whole numbers")
    step = block.tokens
    _require(step.selector in SELECTORS,
             f"block {index}: unknown token selector {step.selector!r}; choose one of {SELECTORS}")
    if not step.active:
        _require(step.selector == "none" and not step.package and step.positions is None
                 and step.package_mode == "concat",
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
    _require(step.package_mode in PACKAGE_MODES,
             f"block {index}: package_mode must be one of {PACKAGE_MODES}, got {step.package_mode!r}")
    _validate_star_fields(step, index, num_patches)
    _require(step.selector_heads is None or (step.selector == "spvit" and _is_count(step.selector_heads)
                                             and step.selector_heads > 0),
             f"block {index}: selector_heads is a positive count, for the spvit selector only")


def _validate_star_fields(step: TokenStep, index: int, num_patches: int) -> None:
    star_fields = (step.alpha, step.inter_scores, step.adaptive_rate)
    if step.selector != "star":
        _require(all(f is None for f in star_fields),
                 f"block {index}: alpha, inter_scores and adaptive_rate belong to the star selector")
        return
    _require(isinstance(step.alpha, (int, float)) and 0 <= step.alpha <= 1,
             f"block {index}: the star selector needs alpha in [0, 1]")
    scores = step.inter_scores or []
    _require(len(scores) == num_patches and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                                for v in scores),
             f"block {index}: the star selector needs {num_patches} positive inter_scores, one per patch position")
    if step.adaptive:
        _require(isinstance(step.adaptive_rate, (int, float)) and 0 < step.adaptive_rate <= 1,
                 f"block {index}: adaptive_rate must be in (0, 1]")
        _require(not step.package, f"block {index}: an adaptive (a-STAR) step cannot add a package token")


def _block_from_dict(data: dict[str, Any]) -> BlockSpec:
    fields = dict(data)
    fields["tokens"] = TokenStep(**fields.get("tokens", {}))
    return BlockSpec(**fields)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise VitDeployError(message)


def _is_count(*values: object) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)

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
from vitdeploy.schema import parse, schema
from vitdeploy.tokens.selectors import SELECTORS, STEP_FIELDS

NO_SELECTOR = "none"
"""A block whose tokens all survive; every other selector name is registered in
``vitdeploy.tokens.selectors`` (``fixed``, ``cls_attn``, ``star``, ``spvit``, ...)."""
PACKAGE_MODES = ("concat", "add")
"""What a step's new package token does when earlier steps left one: sit beside it, or be added
to the last one (SPViT's one-token variant)."""

SPARSITY_PATTERNS = (None, "2:4")
MAX_PARAMETERS = 4_000_000_000
"""Twice ViT-G's size: a spec beyond it is a typo, refused before anything is allocated."""
SELECTION_METHODS = ("topk", "rank")
"""How a scored token step is realised: TopK with a static k, or a sort-free rank selection."""
ACTIVATIONS = ("gelu", "gelu_tanh")
"""The MLP's activation: exact GELU (erf), or its tanh approximation (timm's ``gelu_tanh``,
Hugging Face's ``gelu_new`` / ``gelu_pytorch_tanh``)."""


@schema
@dataclass
class TokenStep:
    """What happens to the patch tokens after a block.

    ``selector`` names a registered token selector (``vitdeploy.tokens.selectors``). ``keep`` is
    the number of *patch* tokens that survive (class/distillation tokens and package tokens are
    always kept and not counted). ``positions`` lists the surviving indices for the
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
    selector: str = NO_SELECTOR
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
        return self.active and SELECTORS.get(self.selector).scored

    @property
    def adaptive(self) -> bool:
        return self.adaptive_rate is not None


@schema
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


@schema
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
    activation: str = "gelu"
    dist_head: bool = True
    """Distilled models only: False when the distillation token has no head of its own and the
    logits are the class token's alone (Hugging Face's ``DeiTForImageClassification``)."""
    labels: list[str] | None = None
    """Class names by class index, when the checkpoint names them (Hugging Face's ``id2label``)."""

    @property
    def has_dist_head(self) -> bool:
        return self.distilled and self.dist_head

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

    def mlp_tokens(self) -> list[int]:
        """Tokens each block's MLP runs on: those entering the block, fewer where it merges tokens
        between attention and MLP (ToMe)."""
        counts = []
        for block, n, patches in zip(self.blocks, self.tokens_entering(), self.patch_tokens_entering()):
            merges = block.tokens.active and SELECTORS.get(block.tokens.selector).merges
            counts.append(n - (patches - block.tokens.keep) if merges else n)
        return counts

    @property
    def adaptive(self) -> bool:
        """True when some token step keeps an input-dependent number of tokens (a-STAR)."""
        return any(b.tokens.adaptive for b in self.blocks)

    @property
    def tracks_patch_positions(self) -> bool:
        """True when a step needs each token's original patch position (STAR's offline scores)."""
        return any(b.tokens.active and SELECTORS.get(b.tokens.selector).tracks_positions for b in self.blocks)

    def parameter_count(self) -> int:
        """Weights and biases of the Linear/Conv layers (norms, tokens and selectors left out)."""
        d = self.embed_dim
        blocks = sum(d * b.heads * (2 * b.qk_dim + b.v_dim) + b.heads * b.v_dim * d + 2 * d * b.mlp_dim
                     for b in self.blocks)
        return self.in_chans * self.patch_size**2 * d + blocks + d * self.num_classes

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
        _require(self.activation in ACTIVATIONS,
                 f"unknown activation {self.activation!r}: choose one of {ACTIVATIONS}")
        _require(self.distilled or self.dist_head, "dist_head=false needs a distilled model (a distillation token)")
        _require(self.labels is None or len(self.labels) == self.num_classes,
                 f"labels name {len(self.labels or [])} classes, the model has {self.num_classes}")
        _require(self.sparsity in SPARSITY_PATTERNS,
                 f"unknown sparsity {self.sparsity!r}: choose one of {SPARSITY_PATTERNS}")
        _require(_is_count(self.img_size, self.patch_size, self.in_chans, self.embed_dim, self.num_classes),
                 "img_size, patch_size, in_chans, embed_dim and num_classes must be whole numbers")
        entering = self.patch_tokens_entering()
        _require(self.parameter_count() <= MAX_PARAMETERS,
                 f"the spec describes {self.parameter_count():.3g} parameters, more than the {MAX_PARAMETERS:.0e} "
                 "vitdeploy allows: check its dims")
        for index, (block, n_in) in enumerate(zip(self.blocks, entering), start=1):
            _validate_block(self, block, index, n_in)
        _require(not self.blocks[-1].tokens.active,
                 f"block {self.depth} is the last block: the head reads only the class token, so dropping "
                 "tokens after it changes nothing")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model spec") -> "ViTSpec":
        return parse(cls, data, where)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "model spec") -> "ViTSpec":
        return parse(cls, text, where)

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


def phase_blocks(depth: int) -> list[int]:
    """0-based blocks after ¼, ½ and ¾ of the depth (3, 6, 9 of 12), where token-pruning phases
    end by default (EViT's and SPViT's placement, moved to block ends)."""
    return sorted({min(depth - 2, max(0, round(i * depth / 4) - 1)) for i in (1, 2, 3)})


def uniform_blocks(depth: int, embed_dim: int, heads: int, mlp_ratio: float = 4.0) -> list[BlockSpec]:
    """The blocks of an unpruned ViT: every block identical, head dim = embed_dim / heads."""
    if embed_dim % heads:
        raise VitDeployError(f"embed_dim {embed_dim} is not divisible by {heads} heads")
    head_dim = embed_dim // heads
    mlp_dim = int(round(embed_dim * mlp_ratio))
    return [BlockSpec(heads=heads, qk_dim=head_dim, v_dim=head_dim, mlp_dim=mlp_dim, attn_scale=head_dim**-0.5)
            for _ in range(depth)]


def _validate_block(spec: ViTSpec, block: BlockSpec, index: int, n_in: int) -> None:
    dims = (block.heads, block.qk_dim, block.v_dim, block.mlp_dim)
    _require(_is_count(*dims) and min(dims) > 0,
             f"block {index}: heads, qk_dim, v_dim and mlp_dim must be positive whole numbers")
    step = block.tokens
    if not step.active:
        _require(step.selector == NO_SELECTOR and not step.package and step.package_mode == "concat"
                 and all(getattr(step, name) is None for name in STEP_FIELDS),
                 f"block {index}: a token selector or package token needs a keep count")
        return
    _require(step.selector != NO_SELECTOR, f"block {index}: keep={step.keep} needs a token selector")
    selector = SELECTORS.get(step.selector)
    _require(_is_count(step.keep) and 1 <= step.keep < n_in,
             f"block {index}: keep={step.keep} must be a whole number in 1..{n_in - 1} (fewer than the "
             f"{n_in} patch tokens entering it)")
    for name in STEP_FIELDS:
        if name not in selector.fields and getattr(step, name) is not None:
            owners = [s for s in SELECTORS.names() if name in SELECTORS.get(s).fields]
            _require(False, f"block {index}: fields like {name} belong to the {' / '.join(owners)} selector, "
                          f"not {step.selector}")
    _require(step.package_mode in PACKAGE_MODES,
             f"block {index}: package_mode must be one of {PACKAGE_MODES}, got {step.package_mode!r}")
    selector.validate(step, index, n_in, spec, block)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise VitDeployError(message)


def _is_count(*values: object) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)

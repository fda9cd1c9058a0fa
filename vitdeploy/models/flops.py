"""Analytic multiply-accumulate counts (MACs) from a spec.

Per block with N tokens entering, embed dim D, H heads, per-head dims qk and v, MLP width M:
    qkv  = N·D·H·(2·qk + v)        attention = H·N²·(qk + v)
    proj = N·H·v·D                 mlp       = 2·N'·D·M
where N' = N, or N − r in a block that merges r tokens between attention and MLP (ToMe),
plus, for a block with a token step, what its selector's scoring costs (the class-attention row
H·N·qk, the SPViT selector's Linear layers on the patch tokens, ToMe's key similarities). Patch embedding
costs N_patches·C·p²·D and each classifier head D·classes. Norms, softmax and GELU are not
counted, the usual convention (fvcore, the NViT and SPViT papers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vitdeploy.models.spec import BlockSpec, ViTSpec
from vitdeploy.tokens.selectors import SELECTORS


@dataclass(frozen=True)
class BlockMacs:
    tokens: int
    qkv: int
    attention: int
    proj: int
    mlp: int
    token_scores: int

    @property
    def total(self) -> int:
        return self.qkv + self.attention + self.proj + self.mlp + self.token_scores

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def block_macs(spec: ViTSpec, tokens_entering: list[int] | None = None) -> list[BlockMacs]:
    """MACs per block; ``tokens_entering`` overrides the spec's token counts (a-STAR images)."""
    result = []
    mlp_tokens = tokens_entering or spec.mlp_tokens()
    counts = zip(spec.blocks, tokens_entering or spec.tokens_entering(), mlp_tokens, spec.package_tokens_entering())
    for block, n, n_mlp, packages in counts:
        h, qk, v, d = block.heads, block.qk_dim, block.v_dim, spec.embed_dim
        result.append(BlockMacs(
            tokens=n,
            qkv=n * d * h * (2 * qk + v),
            attention=h * n * n * (qk + v),
            proj=n * h * v * d,
            mlp=2 * n_mlp * d * block.mlp_dim,
            token_scores=_token_score_macs(spec, block, n, n - spec.num_prefix_tokens - packages),
        ))
    return result


def _token_score_macs(spec: ViTSpec, block: BlockSpec, n: int, patches: int) -> int:
    """Scoring the patch tokens of a step (the selector says how: class-attention row, SPViT, ...)."""
    if not block.tokens.active:
        return 0
    return SELECTORS.get(block.tokens.selector).score_macs(spec, block, n, patches)


def patch_embed_macs(spec: ViTSpec) -> int:
    return spec.num_patches * spec.in_chans * spec.patch_size**2 * spec.embed_dim


def head_macs(spec: ViTSpec) -> int:
    heads = 2 if spec.has_dist_head else 1
    return heads * spec.embed_dim * spec.num_classes


def total_macs(spec: ViTSpec) -> int:
    return patch_embed_macs(spec) + sum(b.total for b in block_macs(spec)) + head_macs(spec)


def macs_report(spec: ViTSpec) -> dict:
    """Per-part MACs as plain data, for JSON reports and ``vitdeploy inspect``."""
    return {
        "patch_embed": patch_embed_macs(spec),
        "blocks": [b.to_dict() for b in block_macs(spec)],
        "head": head_macs(spec),
        "total": total_macs(spec),
    }

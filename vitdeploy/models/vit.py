"""A ViT built from any ``ViTSpec``: per-block dims and per-block token steps.

Parameter names follow timm's VisionTransformer (``blocks.0.attn.qkv.weight`` …), so timm and
DeiT checkpoints load with a key map that is almost the identity. The fused ``qkv`` Linear is laid
out as ``[q (H·qk) | k (H·qk) | v (H·v)]``, which is timm's layout when qk = v = head dim.

Attention always goes through ``scaled_dot_product_attention``. A block whose token step needs
the class token's attention computes only that row, softmax(q_cls·Kᵀ·scale), at O(N·d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitdeploy.models.spec import SELECTION_METHODS, BlockSpec, ViTSpec
from vitdeploy.tokens import select


class PatchEmbed(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.proj = nn.Conv2d(spec.in_chans, spec.embed_dim, spec.patch_size, stride=spec.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, block: BlockSpec, qkv_bias: bool):
        super().__init__()
        self.heads, self.qk_dim, self.v_dim, self.scale = block.heads, block.qk_dim, block.v_dim, block.scale
        self.qkv = nn.Linear(dim, block.heads * (2 * block.qk_dim + block.v_dim), bias=qkv_bias)
        self.proj = nn.Linear(block.heads * block.v_dim, dim)

    def forward(self, x: torch.Tensor, want_cls_scores: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the attention output and, if asked, the class token's attention to every token."""
        batch, n, _ = x.shape
        qk_width = self.heads * self.qk_dim
        q, k, v = self.qkv(x).split([qk_width, qk_width, self.heads * self.v_dim], dim=-1)
        q = q.reshape(batch, n, self.heads, self.qk_dim).transpose(1, 2)
        k = k.reshape(batch, n, self.heads, self.qk_dim).transpose(1, 2)
        v = v.reshape(batch, n, self.heads, self.v_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(batch, n, self.heads * self.v_dim))
        cls_scores = select.cls_attention(q[:, :, :1], k, self.scale) if want_cls_scores else None
        return out, cls_scores


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: ViTSpec, block: BlockSpec, patch_tokens_in: int):
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.attn = Attention(dim, block, spec.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.mlp = Mlp(dim, block.mlp_dim)
        self.step = block.tokens
        self.num_prefix = spec.num_prefix_tokens
        self.patch_tokens_in = patch_tokens_in
        if self.step.selector == "fixed":
            self.register_buffer("keep_positions", torch.tensor(self.step.positions), persistent=False)

    def forward(self, x: torch.Tensor, selection: str = "topk") -> torch.Tensor:
        attn_out, cls_scores = self.attn(self.norm1(x), want_cls_scores=self.step.scored)
        x = x + attn_out
        x = x + self.mlp(self.norm2(x))
        if not self.step.active:
            return x
        return self._drop_tokens(x, cls_scores, selection)

    def _drop_tokens(self, x: torch.Tensor, cls_scores: torch.Tensor | None, selection: str) -> torch.Tensor:
        prefix_end = self.num_prefix
        patch_end = prefix_end + self.patch_tokens_in
        prefix, patches, packages = x[:, :prefix_end], x[:, prefix_end:patch_end], x[:, patch_end:]
        if self.step.selector == "fixed":
            kept = select.gather_fixed(patches, self.keep_positions)
            return torch.cat([prefix, kept, packages], dim=1)
        scores = cls_scores[:, prefix_end:patch_end]
        kept, keep_mask = select.select_tokens(patches, scores, self.step.keep, selection)
        parts = [prefix, kept, packages]
        if self.step.package:
            parts.append(select.package_token(patches, scores, keep_mask))
        return torch.cat(parts, dim=1)


class ViT(nn.Module):
    """Vision Transformer for any ``ViTSpec`` (DeiT/ViT layout, optional distillation token)."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec.validate()
        self.selection = "topk"
        dim = spec.embed_dim
        self.patch_embed = PatchEmbed(spec)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if spec.distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_patches + spec.num_prefix_tokens, dim))
        patch_counts = spec.patch_tokens_entering()
        self.blocks = nn.ModuleList(Block(spec, b, n) for b, n in zip(spec.blocks, patch_counts))
        self.norm = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.head = nn.Linear(dim, spec.num_classes)
        self.head_dist = nn.Linear(dim, spec.num_classes) if spec.distilled else None
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        """timm-style init: truncated normal (std 0.02) weights, zero biases, unit norms."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif ".norm" in name or name.startswith("norm"):
                nn.init.ones_(param)
            else:
                nn.init.trunc_normal_(param, std=0.02, a=-0.04, b=0.04, generator=generator)

    def set_selection(self, method: str) -> None:
        """Choose how token steps select: ``topk`` (TopK, static k) or ``rank`` (sort-free)."""
        if method not in SELECTION_METHODS:
            raise ValueError(f"unknown selection method {method!r}")
        self.selection = method

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x, self.selection)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        logits = self.head(x[:, 0])
        if self.head_dist is None:
            return logits
        return (logits + self.head_dist(x[:, 1])) / 2

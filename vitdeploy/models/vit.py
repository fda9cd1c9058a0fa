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
from vitdeploy.tokens import merge, select
from vitdeploy.tokens.selectors import SELECTORS


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

    def forward(self, x: torch.Tensor, want: str | None = None, alive: torch.Tensor | None = None,
                sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fused attention (SDPA) and what the block's token step asks for (``want``): the class
        token's attention to every token (``cls_scores``), or the keys averaged over heads (``keys``).

        ``alive`` (B, N) of 0/1 masks dead tokens out as keys (a-STAR's input-dependent drops);
        ``sizes`` (B, N) makes the attention proportional to merged tokens' sizes (ToMe).
        """
        q, k, v = self.project_qkv(x)
        key_mask = None if alive is None else alive.bool()[:, None, None, :]
        bias = key_mask if sizes is None else merge.proportional_bias(sizes)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        extra = None
        if want == "cls_scores":
            extra = select.cls_attention(q[:, :, :1], k, self.scale, key_mask)
        elif want == "keys":
            extra = k.mean(dim=1)
        return self._merge_heads(out), extra

    def explicit(self, x: torch.Tensor, normalise=lambda logits: torch.softmax(logits, dim=-1)
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention with its probabilities (B, H, N, N) materialised: for calibration, which reads
        them, and for training with soft token masks, which ``normalise`` applies to the logits."""
        q, k, v = self.project_qkv(x)
        probs = normalise((q @ k.transpose(-2, -1)) * self.scale)
        return self._merge_heads(probs @ v), probs

    def _merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        batch, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(batch, n, self.heads * self.v_dim))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head queries, keys and values, each (B, H, N, d)."""
        batch, n, _ = x.shape
        qk_width = self.heads * self.qk_dim
        q, k, v = self.qkv(x).split([qk_width, qk_width, self.heads * self.v_dim], dim=-1)
        q = q.reshape(batch, n, self.heads, self.qk_dim).transpose(1, 2)
        k = k.reshape(batch, n, self.heads, self.qk_dim).transpose(1, 2)
        v = v.reshape(batch, n, self.heads, self.v_dim).transpose(1, 2)
        return q, k, v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A transformer block and its token step.

    ``forward`` takes and returns ``positions`` (B, N_patches, as floats): where each patch token
    came from in the image, tracked only when a STAR step needs it, and ``sizes`` (B, N): how many
    patches each token stands for, from the first ToMe merge on (otherwise both are None).
    """

    def __init__(self, spec: ViTSpec, block: BlockSpec, patch_tokens_in: int):
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.attn = Attention(dim, block, spec.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.mlp = Mlp(dim, block.mlp_dim, spec.activation)
        self.step = block.tokens
        self.num_prefix = spec.num_prefix_tokens
        self.patch_tokens_in = patch_tokens_in
        self.selector = None
        """The step's learned module, for selectors that have one (SPViT)."""
        self.token_selector = SELECTORS.get(self.step.selector) if self.step.active else None
        if self.token_selector is not None:
            self.token_selector.attach(self, self.step, block, spec)

    def residual(self, x: torch.Tensor, attend, between=None) -> tuple[torch.Tensor, object]:
        """The block's residual structure around any attention: ``attend(norm1(x))`` returns
        (output, extra); the MLP follows. Returns (tokens, extra). Every mode uses it: fused
        (``forward``), masked keys (``forward_adaptive``), explicit probabilities (calibration)
        and soft masks (SPViT training). ``between(tokens, extra)`` → (tokens, extra) runs between
        attention and MLP (ToMe's merge)."""
        attn_out, extra = attend(self.norm1(x))
        x = x + attn_out
        if between is not None:
            x, extra = between(x, extra)
        return x + self.mlp(self.norm2(x)), extra

    def forward(self, x: torch.Tensor, selection: str = "topk", positions: torch.Tensor | None = None,
                sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.merges:
            x, sizes = self.residual(x, lambda h: self.attn(h, self.from_attention, sizes=sizes),
                                     lambda t, keys: self.token_selector.merge(self, t, keys, sizes, selection))
            return x, positions, sizes
        x, cls_scores = self.residual(x, lambda h: self.attn(h, self.from_attention, sizes=sizes))
        if not self.step.active:
            return x, positions, sizes
        return (*self._drop_tokens(x, cls_scores, selection, positions), sizes)

    def forward_adaptive(self, x: torch.Tensor, alive: torch.Tensor,
                         positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block on all tokens with dead ones masked out of attention (a-STAR, PyTorch only);
        returns the new ``alive`` mask over every token (prefix tokens always live)."""
        x, cls_scores = self.residual(x, lambda h: self.attn(h, self.from_attention, alive=alive))
        if not self.step.active:
            return x, alive
        patch = slice(self.num_prefix, None)
        scores = self._patch_scores(cls_scores[:, patch], positions, x[:, patch])
        kept = select.adaptive_keep_mask(scores, alive[:, patch], self.step.adaptive_rate)
        return x, torch.cat([alive[:, : self.num_prefix], kept], dim=1)

    @property
    def merges(self) -> bool:
        return self.token_selector is not None and self.token_selector.merges

    @property
    def from_attention(self) -> str | None:
        """What the token step reads from the attention (``Attention.forward``'s ``want``)."""
        if self.merges:
            return "keys"
        return "cls_scores" if self.token_selector is not None and self.token_selector.needs_cls_attention else None

    def _patch_scores(self, cls_scores: torch.Tensor | None, positions: torch.Tensor | None,
                      patches: torch.Tensor) -> torch.Tensor:
        return self.token_selector.scores(self, cls_scores, positions, patches)

    def _drop_tokens(self, x: torch.Tensor, cls_scores: torch.Tensor | None, selection: str,
                     positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        prefix_end = self.num_prefix
        patch_end = prefix_end + self.patch_tokens_in
        prefix, patches, packages = x[:, :prefix_end], x[:, prefix_end:patch_end], x[:, patch_end:]
        if not self.token_selector.scored:
            kept, positions = self.token_selector.gather(self, patches, positions)
            return torch.cat([prefix, kept, packages], dim=1), positions
        patch_cls_scores = None if cls_scores is None else cls_scores[:, prefix_end:patch_end]
        scores = self._patch_scores(patch_cls_scores, positions, patches)
        take, keep_mask = select.token_selection(scores, self.step.keep, selection)
        if self.step.package:
            weights = self.token_selector.package_weights(scores)
            packages = self._with_package(packages, select.package_token(patches, weights, keep_mask))
        parts = [prefix, take(patches), packages]
        if positions is not None:
            positions = take(positions.unsqueeze(-1)).squeeze(-1)
        return torch.cat(parts, dim=1), positions

    def _with_package(self, packages: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if self.step.package_mode == "add" and packages.shape[1]:
            return torch.cat([packages[:, :-1], packages[:, -1:] + new], dim=1)
        return torch.cat([packages, new], dim=1)


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
        self.head_dist = nn.Linear(dim, spec.num_classes) if spec.has_dist_head else None
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        """timm-style init: truncated normal (std 0.02) weights, zero biases, unit norms."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        norm_weights = {f"{name}.weight" for name, module in self.named_modules() if isinstance(module, nn.LayerNorm)}
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif name in norm_weights:
                nn.init.ones_(param)
            else:
                nn.init.trunc_normal_(param, std=0.02, a=-0.04, b=0.04, generator=generator)

    def set_selection(self, method: str) -> None:
        """Choose how token steps select: ``topk`` (TopK, static k) or ``rank`` (sort-free)."""
        if method not in SELECTION_METHODS:
            raise ValueError(f"unknown selection method {method!r}")
        self.selection = method

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images → the token sequence entering the first block (prefix tokens, then patches)."""
        x = self.patch_embed(x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        return torch.cat(prefix + [x], dim=1) + self.pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.adaptive:
            return self.forward_adaptive(x)[0]
        x = self.embed(x)
        positions = self._patch_positions(x) if self.spec.tracks_patch_positions else None
        sizes = None
        for block in self.blocks:
            x, positions, sizes = block(x, self.selection, positions, sizes)
        return self.norm(x)

    def forward_adaptive(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features with a-STAR's input-dependent drops, as masks (PyTorch only), and the number
        of patch tokens alive entering each block, (B, depth)."""
        x = self.embed(x)
        positions = self._patch_positions(x)
        alive = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        counts = []
        for block in self.blocks:
            counts.append(alive[:, self.spec.num_prefix_tokens:].sum(dim=1))
            x, alive = block.forward_adaptive(x, alive, positions)
        return self.norm(x), torch.stack(counts, dim=1)

    def _patch_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        n = self.spec.num_patches
        return torch.arange(n, dtype=tokens.dtype, device=tokens.device).expand(tokens.shape[0], n)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the final tokens: the class token's, averaged with the distillation token's
        when it has a head."""
        logits = self.head(features[:, 0])
        if self.head_dist is None:
            return logits
        return (logits + self.head_dist(features[:, 1])) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.forward_features(x))

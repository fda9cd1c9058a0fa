"""SPViT's multi-head token selector (Kong et al., "SPViT: Enabling Faster Vision Transformers via
Soft Token Pruning"), as a module that lives inside a ``Block`` with an ``spvit`` token step.

For patch tokens X (N × C) split into H heads x_i (N × d), d = C / H, with weights shared by the
heads:

    f_local  = GELU(Linear(d, d/2)(LayerNorm(x_i)))
    f_global = mean of f_local over the tokens still alive
    t_i      = softmax(Linear(d/4, 2)(GELU(Linear(d/2, d/4)(GELU(Linear(d, d/2)([f_local, f_global]))))))
    a        = sigmoid(Linear(H/2, H)(GELU(Linear(H, H/2)(mean over each head's channels of X))))
    T        = Σ_i t_i[keep] · a_i / Σ_i a_i

``T`` (B, N) is each token's keep probability. At inference a static top-k of the logit
log T − log(1 − T) (see ``keep_logit``: confident tokens do not tie) picks the kept tokens, and T
weighs the package token; training samples keep/drop decisions from T with Gumbel-softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KEEP, DROP = 0, 1
"""Indices of the 'keep' and 'drop' classes in each head's two-way softmax."""


def _half(n: int) -> int:
    return max(1, n // 2)


class SPViTSelector(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"an SPViT selector needs embed dim {dim} divisible by its {heads} heads")
        d = dim // heads
        self.heads = heads
        self.local = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, _half(d)), nn.GELU())
        self.score = nn.Sequential(nn.Linear(2 * _half(d), _half(d)), nn.GELU(),
                                   nn.Linear(_half(d), _half(_half(d))), nn.GELU(),
                                   nn.Linear(_half(_half(d)), 2))
        self.head_weights = nn.Sequential(nn.Linear(heads, _half(heads)), nn.GELU(),
                                          nn.Linear(_half(heads), heads))
        """Logits of the head weights a = sigmoid(·)."""

    def forward(self, x: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
        """Keep probabilities T (B, N) of patch tokens ``x`` (B, N, C); ``alive`` (B, N) of 0/1
        marks the tokens that count towards the global feature (all of them when None)."""
        return self.log_keep(x, alive).exp()

    def log_keep(self, x: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
        """log T = log Σ_i t_i·a_i − log Σ_i a_i."""
        log_probs, log_a = self._head_log_probs(x, alive)
        return torch.logsumexp(log_probs[..., KEEP] + log_a, dim=-1) - torch.logsumexp(log_a, dim=-1)

    def keep_logit(self, x: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
        """log T − log(1 − T): ranks tokens as T does, without ties between confident ones.

        For tokens every head is sure to keep, T rounds to 1.0 and log T to 0.0, so top-k would
        pick among exact ties, and ONNX Runtime may pick other tokens than PyTorch. Each
        head's log-softmax is exact for its *less* likely class, and 1 − T = Σ_i (1 − t_i)·a_i / Σ_i a_i
        is mixed from those, so the difference keeps the small side's precision at either end.
        """
        log_probs, log_a = self._head_log_probs(x, alive)
        mixed = torch.logsumexp(log_probs + log_a.unsqueeze(-1), dim=-2)  # (B, N, 2) up to log Σ_i a_i
        return mixed[..., KEEP] - mixed[..., DROP]

    def _head_log_probs(self, x: torch.Tensor, alive: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each head's log (t_i, 1 − t_i), (B, N, H, 2), and log a, (B, N, H)."""
        batch, n, dim = x.shape
        per_head = x.reshape(batch, n, self.heads, dim // self.heads)
        local = self.local(per_head)
        if alive is None:
            global_ = local.mean(dim=1, keepdim=True)
        else:
            weights = alive.to(x.dtype)[:, :, None, None]
            global_ = (local * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        features = torch.cat([local, global_.expand_as(local)], dim=-1)
        log_probs = torch.log_softmax(self.score(features), dim=-1)
        return log_probs, F.logsigmoid(self.head_weights(per_head.mean(dim=-1)))

    @staticmethod
    def macs_per_token(dim: int, heads: int) -> int:
        """Multiply-accumulates per token (Linear layers only, as ``vitdeploy.models.flops`` counts)."""
        d, h = dim // heads, heads
        per_head = d * _half(d) + 2 * _half(d) * _half(d) + _half(d) * _half(_half(d)) + _half(_half(d)) * 2
        return heads * per_head + h * _half(h) + _half(h) * h

"""Token selection primitives shared by every token-pruning method.

All but the last keep a *static* number of tokens, so exported graphs have fixed per-layer shapes:

- ``topk``: TopK with a static k (sorted, so the kept tokens come in descending score order);
- ``rank``: a sort-free selection for targets without TopK. Each token's rank is counted with
  pairwise comparisons, and a one-hot (k × N) matrix built from the ranks gathers the kept
  tokens with one MatMul. Without exact ties it yields the tokens, and the order, that ``topk``
  yields. Ties go to the lower index, as ONNX's TopK specifies; PyTorch's CPU ``topk`` promises
  no order among ties, so exactly equal scores at the cut-off can select differently there;
- ``gather_fixed``: constant positions (a Gather with constant indices);
- ``package_token``: SPViT's score-weighted average of the dropped tokens, P = Σ n_i·m_i / Σ m_i;
- ``star_scores``: STAR's fusion of class attention with offline per-position scores;
- ``adaptive_keep_mask``: a-STAR's input-dependent count (PyTorch only: it sorts).

The functions work on patch tokens only; the model keeps class/distillation tokens around them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PACKAGE_EPS = 1e-12


def cls_attention(q_cls: torch.Tensor, k: torch.Tensor, scale: float,
                  key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The class token's attention to every token, averaged over heads: (B, H, 1, d) → (B, N).

    Only the class row is computed, O(N·d) per head, so the block's own attention can stay fused.
    ``key_mask`` (broadcastable to (B, H, 1, N), True = attend) leaves dead tokens out (a-STAR).
    """
    logits = (q_cls @ k.transpose(-2, -1)) * scale
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask, float("-inf"))
    attn = torch.softmax(logits, dim=-1)
    return attn.mean(dim=1).squeeze(1)


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of the k highest scores, highest first."""
    return torch.topk(scores, k, dim=1, largest=True, sorted=True).indices


def selected_indices(scores: torch.Tensor, k: int, method: str = "topk") -> torch.Tensor:
    """Indices (B, k) of the k highest scores, highest first, by either selection method."""
    if method == "rank":
        positions = torch.arange(scores.shape[1], dtype=scores.dtype, device=scores.device)
        return (rank_onehot(scores, k) @ positions).long()
    if method != "topk":
        raise ValueError(f"unknown selection method {method!r}")
    return topk_indices(scores, k)


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Tokens (B, N, D) at per-sample indices (B, k) → (B, k, D)."""
    return torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def gather_fixed(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Tokens (B, N, D) at the same constant positions for every sample → (B, k, D)."""
    return x.index_select(1, positions)


def rank_onehot(scores: torch.Tensor, k: int) -> torch.Tensor:
    """One-hot selection matrix (B, k, N): row r marks the token of rank r (0 = highest score).

    rank_i = #{j : s_j > s_i} + #{j < i : s_j = s_i}, built from comparisons and sums only.
    """
    n = scores.shape[1]
    s_i, s_j = scores.unsqueeze(2), scores.unsqueeze(1)
    earlier = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril(-1)
    beats = (s_j > s_i) | ((s_j == s_i) & earlier)
    rank = beats.to(scores.dtype).sum(dim=2)
    slots = torch.arange(k, device=scores.device, dtype=scores.dtype).view(1, k, 1)
    return (rank.unsqueeze(1) == slots).to(scores.dtype)


def token_selection(
    scores: torch.Tensor, k: int, method: str = "topk"
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """How to keep the k highest-scoring tokens: a function that applies the selection to any
    (B, N, C) tensor aligned with ``scores``, and the keep mask (B, N) of 0/1."""
    if method == "rank":
        onehot = rank_onehot(scores, k)
        return (lambda t: onehot.to(t.dtype) @ t), onehot.sum(dim=1)
    indices = selected_indices(scores, k, method)
    return (lambda t: gather_tokens(t, indices)), torch.zeros_like(scores).scatter(1, indices, 1.0)


def select_tokens(
    x: torch.Tensor, scores: torch.Tensor, k: int, method: str = "topk"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k highest-scoring tokens. Returns (kept (B, k, D), keep mask (B, N) of 0/1)."""
    take, keep_mask = token_selection(scores, k, method)
    return take(x), keep_mask


def star_scores(cls_scores: torch.Tensor, inter_prior: torch.Tensor, positions: torch.Tensor,
                alpha: float) -> torch.Tensor:
    """STAR's fused score S_intra^α · S_inter^(1−α) (unnormalised: a per-sample scale does not
    change a ranking). ``inter_prior`` holds S_inter^(1−α) per original patch position and
    ``positions`` (B, N) where each current token came from, as floats."""
    return cls_scores.pow(alpha) * inter_prior[positions.long()]


def adaptive_keep_mask(scores: torch.Tensor, alive: torch.Tensor, rate: float) -> torch.Tensor:
    """a-STAR: per sample, the fewest alive tokens whose normalised scores sum to ≥ ``rate``.

    Input-dependent counts need a sort, so this is for evaluation in PyTorch only, never export.
    """
    scores = scores * alive
    probs = scores / scores.sum(dim=1, keepdim=True).clamp_min(PACKAGE_EPS)
    sorted_probs, order = probs.sort(dim=1, descending=True)
    mass_before = sorted_probs.cumsum(dim=1) - sorted_probs
    keep_sorted = (mass_before < rate) & (sorted_probs > 0)
    return torch.zeros_like(alive).scatter(1, order, keep_sorted.to(alive.dtype)) * alive


def package_token(x: torch.Tensor, scores: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """SPViT package token (B, 1, D): the dropped tokens averaged with their scores as weights."""
    weights = (scores * (1.0 - keep_mask)).unsqueeze(-1)
    total = weights.sum(dim=1, keepdim=True).clamp_min(PACKAGE_EPS)
    return (weights * x).sum(dim=1, keepdim=True) / total

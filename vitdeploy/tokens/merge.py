"""Token merging (ToMe, Bolya et al., ICLR 2023): bipartite soft matching with a static count.

Inside a block, between attention and MLP, the patch tokens alternate into sets A (even
positions) and B (odd positions). Each A token finds its most similar B token, by the cosine
similarity of the tokens' keys averaged over heads; the ``r`` A tokens with the most similar
partners merge into them, by an average weighted with each token's size (how many patches it
already stands for). Prefix tokens (class, distillation) are never matched.

The output order is the reference implementation's: prefix tokens, the unmerged A tokens, then
the B tokens, each in their original order. Both choices are TopK with a static k (or the
sort-free rank selection), never an ArgSort: the r best edges, then the |A| − r unmerged tokens
by a key that ranks them by position. The merge adds each merged A token to its partner through
a one-hot (r × |B|) matrix, one MatMul that both ONNX Runtime and TensorRT run, instead of a
ScatterElements with an ``add`` reduction (which TensorRT leaves to a plugin).
"""

from __future__ import annotations

import torch

from vitdeploy.tokens import select


def merge_tokens(x: torch.Tensor, keys: torch.Tensor, sizes: torch.Tensor | None, r: int, num_prefix: int,
                 method: str = "topk") -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` patch tokens of ``x`` (B, N, D) into others. ``keys`` (B, N, d) are the keys
    averaged over heads, ``sizes`` (B, N) each token's size (None: all 1). Returns the tokens
    (B, N − r, D) and their sizes (B, N − r)."""
    if sizes is None:
        sizes = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    best, partner = best_partners(keys[:, num_prefix:])
    take_merged, merged = select.token_selection(best, r, method)
    patch_sizes = sizes[:, num_prefix:].unsqueeze(-1)
    weighted = torch.cat([x[:, num_prefix:] * patch_sizes, patch_sizes], dim=-1)
    set_a, set_b = weighted[:, 0::2], weighted[:, 1::2]
    targets = take_merged(partner.unsqueeze(-1).to(torch.float32))[..., 0]
    onehot = (targets.unsqueeze(-1) == torch.arange(set_b.shape[1], dtype=torch.float32, device=x.device))
    set_b = set_b + onehot.to(x.dtype).transpose(1, 2) @ take_merged(set_a)
    result = torch.cat([_unmerged_in_order(set_a, merged, r, method), set_b], dim=1)
    new_sizes = result[..., -1]
    tokens = result[..., :-1] / new_sizes.unsqueeze(-1)
    return torch.cat([x[:, :num_prefix], tokens], dim=1), torch.cat([sizes[:, :num_prefix], new_sizes], dim=1)


def _unmerged_in_order(set_a: torch.Tensor, merged: torch.Tensor, r: int, method: str) -> torch.Tensor:
    """The A tokens that were not merged (``merged`` (B, |A|) marks the rest), in their original
    order: the top |A| − r of a key that ranks every unmerged token above every merged one and
    earlier tokens first."""
    n = set_a.shape[1]
    if r == n:
        return set_a[:, :0]
    positions = torch.arange(n, dtype=merged.dtype, device=merged.device)
    take, _ = select.token_selection(-positions - n * merged, n - r, method)
    return take(set_a)


def best_partners(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each A token (even positions of ``keys``, (B, N, d)): the cosine similarity of its most
    similar B token (odd positions), and that token's index within B; each (B, |A|)."""
    keys = keys / keys.norm(dim=-1, keepdim=True)
    similarity = keys[:, 0::2] @ keys[:, 1::2].transpose(1, 2)
    return similarity.max(dim=-1)


def proportional_bias(sizes: torch.Tensor | None) -> torch.Tensor | None:
    """ToMe's proportional attention: log(size) added to every query's logit for each key, so a
    token standing for s patches weighs as s copies of one; (B, 1, 1, N), or None before any merge."""
    return None if sizes is None else sizes.log()[:, None, None, :]

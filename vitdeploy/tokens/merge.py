"""Token merging (ToMe, Bolya et al., ICLR 2023): bipartite soft matching with a static count.

Inside a block, between attention and MLP, the patch tokens alternate into sets A (even
positions) and B (odd positions). Each A token finds its most similar B token, by the cosine
similarity of the tokens' keys averaged over heads; the ``r`` A tokens with the most similar
partners merge into them, by an average weighted with each token's size (how many patches it
already stands for). Prefix tokens (class, distillation) are never matched.

The output order is the reference implementation's: prefix tokens, the unmerged A tokens, then
the B tokens, each in their original order. Both choices are TopK with a static k (or the
sort-free rank selection), never an ArgSort: the r best edges, then the |A| − r unmerged tokens
by a key that ranks them by position (when all of A merges, neither is needed).

The arithmetic is laid out for few passes over the full-width tokens, which cost more than the
small index ops. One gather (on the flattened batch) writes the output tokens in order; then each
B token b with merged partners a moves to its size-weighted average, written as
``b + Σ s_a / S_b · (a − b)`` with S_b the merged size (the same average as
``(s_b·b + Σ s_a·a) / S_b``, and exactly b when nothing merges into it). The r moves reach their
partners through a one-hot (N − r) × r matrix, one MatMul that both ONNX Runtime and TensorRT run,
instead of a ScatterElements with an ``add`` reduction (which TensorRT leaves to a plugin).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitdeploy.tokens import select


@dataclass(frozen=True)
class Matching:
    """What a merge does, as per-sample int64 indices: ``kept`` (B, N − r), where each output token
    comes from in the input; ``sources`` (B, r), the input positions of the merged A tokens;
    ``targets`` (B, r), the output positions of their partners."""

    kept: torch.Tensor
    sources: torch.Tensor
    targets: torch.Tensor


def merge_tokens(x: torch.Tensor, keys: torch.Tensor, sizes: torch.Tensor | None, r: int, num_prefix: int,
                 method: str = "topk") -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` patch tokens of ``x`` (B, N, D) into others. ``keys`` (B, N, d) are the keys
    averaged over heads, ``sizes`` (B, N) each token's size (None: all 1). Returns the tokens
    (B, N − r, D) and their sizes (B, N − r)."""
    return merge_matched(x, sizes, bipartite_matching(keys, r, num_prefix, method))


def bipartite_matching(keys: torch.Tensor, r: int, num_prefix: int, method: str = "topk") -> Matching:
    """Which ``r`` patch tokens merge into which, from the keys (B, N, d) averaged over heads."""
    best, partner = best_partners(keys, num_prefix)
    merged, unmerged = _merged_and_unmerged(best, r, method)
    first_b = num_prefix + best.shape[1] - r
    return Matching(kept=_kept_positions(keys, unmerged, num_prefix), sources=num_prefix + 2 * merged,
                    targets=partner.gather(1, merged) + first_b)


def merge_matched(x: torch.Tensor, sizes: torch.Tensor | None, matching: Matching) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens (B, N − r, D) and sizes (B, N − r) after ``matching``: one gather, and the moves
    reaching their partners through one-hot MatMuls (module docstring)."""
    if sizes is None:
        sizes = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    into = _one_hot(matching.targets, matching.kept.shape[1]).to(x.dtype)
    source_sizes = sizes.gather(1, matching.sources).unsqueeze(-1)
    new_sizes = sizes.gather(1, matching.kept) + (into.transpose(1, 2) @ source_sizes).squeeze(-1)
    tokens = gather_rows(x, matching.kept)
    partner_sizes, partner_tokens = into @ new_sizes.unsqueeze(-1), into @ tokens
    moves = source_sizes / partner_sizes * (gather_rows(x, matching.sources) - partner_tokens)
    return tokens + into.transpose(1, 2) @ moves, new_sizes


def _merged_and_unmerged(best: torch.Tensor, r: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices within A of the r tokens with the most similar partners (B, r), and of the
    others (B, |A| − r) in their original order: the top |A| − r of a key that ranks earlier tokens
    first and every merged token last."""
    set_a = best.shape[1]
    positions = torch.arange(set_a, device=best.device).expand(best.shape[0], -1)
    if r == set_a:  # every A token merges, in any order: ranking them all would be a sort
        return positions, positions[:, :0]
    merged = select.selected_indices(best, r, method)
    key = (-positions.to(torch.float32)).scatter(1, merged, -float(set_a))
    return merged, select.selected_indices(key, set_a - r, method)


def _kept_positions(tokens: torch.Tensor, unmerged: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Where each output token comes from in ``tokens`` (B, N, ·), (B, N − r): the prefix tokens, the
    unmerged A tokens (even patch positions), then every B token (odd patch positions)."""
    batch, n = tokens.shape[:2]
    prefix = torch.arange(num_prefix, device=tokens.device).expand(batch, -1)
    set_b = torch.arange(num_prefix + 1, n, 2, device=tokens.device).expand(batch, -1)
    return torch.cat([prefix, num_prefix + 2 * unmerged, set_b], dim=1)


def _one_hot(indices: torch.Tensor, n: int) -> torch.Tensor:
    """(B, k) indices → (B, k, n) rows of 0/1."""
    return indices.unsqueeze(-1) == torch.arange(n, device=indices.device)


def gather_rows(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Tokens (B, N, D) at per-sample indices (B, k) → (B, k, D), as one gather from the flattened
    batch: unlike a GatherElements, it needs no index tensor expanded to the feature width."""
    batch, n, dim = x.shape
    offsets = torch.arange(batch, device=x.device).unsqueeze(1) * n
    return x.reshape(-1, dim)[indices + offsets]


def best_partners(keys: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each A token (even patch positions of ``keys``, (B, N, d)): the cosine similarity of its
    most similar B token (odd patch positions), and that token's index within B; each (B, |A|)."""
    keys = keys / keys.norm(dim=-1, keepdim=True)
    similarity = keys[:, num_prefix::2] @ keys[:, num_prefix + 1::2].transpose(1, 2)
    return similarity.max(dim=-1)


def proportional_bias(sizes: torch.Tensor) -> torch.Tensor:
    """ToMe's proportional attention: log(size) added to every query's logit for each key, so a
    token standing for s patches weighs as s copies of one; (B, 1, 1, N)."""
    return sizes.log()[:, None, None, :]

"""Successive halving: candidates compared only after equal fine-tuning, more steps for the better half.

Round k fine-tunes every candidate still in the race for ``first_steps × 2^k`` more steps
(distilled, token plan active, the same data order for all), then scores it on the held-out proxy
sample. So at every comparison each candidate has had the same fine-tuning since it was made; a
score taken before any fine-tune favours whichever candidate the pruning had already damaged
least, not the one that recovers best. The better half goes on, and so do the best NViT-alone and
the best token-alone candidates, so the final comparison always includes the single-method
runs (so a race among those three goes on with doubled steps). The race ends when one candidate
is left or when the next round would take a candidate past the full fine-tune.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from vitdeploy.optimize.candidates import SINGLE_METHODS, Candidate


def rank_key(candidate: Candidate) -> tuple[float, float]:
    """Better proxy first; at equal proxy, the faster one (measured)."""
    return candidate.proxies[-1], -candidate.budget_share


def successive_halving(candidates: list[Candidate], tune: Callable[[Candidate, int, int], None],
                       score: Callable[[Candidate], float], first_steps: int, total_steps: int) -> list[dict]:
    """Run the race (module docstring); return its rounds: cumulative steps and every contestant's
    proxy. ``tune(candidate, steps, round_index)`` fine-tunes in place; the winner is
    ``ranking(candidates)[0]``."""
    alive, rounds, spent, steps = list(candidates), [], 0, min(first_steps, total_steps)
    while True:
        for candidate in alive:
            tune(candidate, steps, len(rounds))
            candidate.proxies.append(score(candidate))
        spent += steps
        rounds.append({"steps": spent, "proxy": {c.name: c.proxies[-1] for c in alive}})
        survivors = halve(alive)
        steps *= 2
        if len(survivors) == 1 or not 0 < spent + steps <= total_steps:
            return rounds
        alive = survivors


def halve(alive: list[Candidate]) -> list[Candidate]:
    """The better half of ``alive`` plus the best of each single-method kind, in their order."""
    ranked = sorted(alive, key=rank_key, reverse=True)
    keep = ranked[:math.ceil(len(alive) / 2)]
    for kind in SINGLE_METHODS:
        best = next((c for c in ranked if c.kind == kind), None)
        if best is not None and best not in keep:
            keep.append(best)
    return [c for c in alive if c in keep]


def ranking(candidates: list[Candidate]) -> list[Candidate]:
    """Best first: the ones that stayed in the race longer, then by their last proxy and speed."""
    return sorted(candidates, key=lambda c: (len(c.proxies), *rank_key(c)), reverse=True)


def rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (ties share their mean rank); None for fewer than 3 pairs or a
    constant list."""
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var > 0 else None


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks

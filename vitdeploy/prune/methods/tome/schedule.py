"""ToMe plans: how many patch tokens each block merges, as token steps of a spec."""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import TokenStep, ViTSpec
from vitdeploy.tokens.selectors.tome import TokenMerging


def per_block(r: float, depth: int, shape: str) -> list[int]:
    """Merges in blocks 1 … depth − 1 (the last block's merge would change nothing the head reads)."""
    blocks = depth - 1
    if shape == "constant":
        return [round(r)] * blocks
    return [round(2 * r * (blocks - i) / blocks) for i in range(blocks)]


def tome_spec(spec: ViTSpec, merges: list[int] | tuple[int, ...]) -> ViTSpec:
    """``spec`` with a ToMe step on each block that merges; refuses a schedule the model cannot run."""
    if len(merges) > spec.depth - 1:
        raise VitDeployError(f"the ToMe schedule lists {len(merges)} blocks, but a {spec.depth}-block model merges "
                             f"in blocks 1..{spec.depth - 1} at most (the last block's merge changes nothing)")
    too_many = _first_block_merging_too_many(spec.num_patches, merges)
    if too_many is not None:
        index, n, r = too_many
        raise VitDeployError(f"block {index + 1} can merge at most {TokenMerging.most_merged(n)} of the {n} patch "
                             f"tokens entering it (one per token of the smaller set), not r={r}")
    steps, n = {}, spec.num_patches
    for index, r in enumerate(merges):
        if r:
            n -= r
            steps[index] = TokenStep(keep=n, selector="tome")
    return spec.with_token_plan(steps)


def largest_r(spec: ViTSpec, shape: str) -> int:
    """The largest r whose schedule every block can merge."""
    r = 0
    while _first_block_merging_too_many(spec.num_patches, per_block(r + 1, spec.depth, shape)) is None:
        r += 1
    return r


def _first_block_merging_too_many(patches: int, merges) -> tuple[int, int, int] | None:
    """(block index, patch tokens entering it, r) of the first block asked to merge more than it
    can, or None."""
    n = patches
    for index, r in enumerate(merges):
        if r > TokenMerging.most_merged(n):
            return index, n, r
        n -= r
    return None

"""ToMe plans: how many patch tokens each block merges, as token steps of a spec."""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import TokenStep, ViTSpec


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
    steps, n = {}, spec.num_patches
    for index, r in enumerate(merges):
        if r > n // 2:
            raise VitDeployError(f"block {index + 1} can merge at most {n // 2} of the {n} patch tokens entering it "
                                 f"(one per token of the smaller set), not r={r}")
        if r:
            n -= r
            steps[index] = TokenStep(keep=n, selector="tome")
    return spec.with_token_plan(steps)


def largest_r(spec: ViTSpec, shape: str) -> int:
    """The largest r whose schedule every block can merge."""
    r = 0
    while _fits(spec, per_block(r + 1, spec.depth, shape)):
        r += 1
    return r


def _fits(spec: ViTSpec, merges: list[int]) -> bool:
    n = spec.num_patches
    for r in merges:
        if r > n // 2:
            return False
        n -= r
    return True

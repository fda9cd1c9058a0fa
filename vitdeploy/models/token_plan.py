"""Static token plans given on the command line: ``--keep 4:0.7,7:96,10:0.7``.

Blocks are numbered from 1, as people count them ("drop tokens after block 4"). A keep value
written as a whole number (``96``) is a patch-token count; one with a decimal point is a rate
of the patch tokens entering that block and must lie strictly between 0 and 1 (``0.7``).
"""

from __future__ import annotations

import math

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import TokenStep, ViTSpec
from vitdeploy.models.vit import ViT

Keep = int | float
"""A patch-token count (int) or a keep rate in (0, 1) (float)."""


def parse_keep(text: str) -> dict[int, Keep]:
    """'4:0.7,7:96' → {3: 0.7, 6: 96} (0-based block index → count or rate)."""
    plan: dict[int, Keep] = {}
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        block, sep, value = item.partition(":")
        if not sep or not (block.strip().isascii() and block.strip().isdigit()):
            raise VitDeployError(f"--keep item {item!r} is not BLOCK:KEEP (e.g. 4:0.7 or 4:137)")
        index = int(block) - 1
        if index < 0:
            raise VitDeployError("--keep blocks are numbered from 1")
        if index in plan:
            raise VitDeployError(f"--keep names block {index + 1} twice")
        plan[index] = _parse_amount(value.strip(), item)
    if not plan:
        raise VitDeployError("--keep is empty; give BLOCK:KEEP pairs such as 4:0.7,7:0.7,10:0.7")
    return plan


def _parse_amount(value: str, item: str) -> Keep:
    if value.isascii() and value.isdigit():
        return int(value)
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not 0 < rate < 1:
        raise VitDeployError(f"--keep item {item!r}: KEEP must be a whole count (137) or a rate strictly "
                             "between 0 and 1 (0.7)")
    return rate


def keep_count(amount: Keep, n_in: int) -> int:
    """The number of patch tokens to keep out of ``n_in``: a count as is, a rate rounded up."""
    return amount if isinstance(amount, int) else max(1, math.ceil(amount * n_in))


def keep_plan_spec(spec: ViTSpec, plan: dict[int, Keep], selector: str = "cls_attn",
                   package: bool = False) -> ViTSpec:
    """The spec with score-based token steps after the planned blocks (replacing any old plan)."""
    steps, n = {}, spec.num_patches
    for index in sorted(plan):  # a rate applies to the tokens left by the earlier steps
        n = keep_count(plan[index], n)
        steps[index] = TokenStep(keep=n, selector=selector, package=package)
    return spec.with_token_plan(steps)


def with_spec(model: ViT, spec: ViTSpec) -> ViT:
    """A model with a new token plan and the same weights (token steps add no parameters)."""
    new = ViT(spec)
    new.load_state_dict(model.state_dict())
    return new.eval()


def apply_keep_plan(model: ViT, text: str, package: bool = False) -> ViT:
    return with_spec(model, keep_plan_spec(model.spec, parse_keep(text), package=package))

"""Static token plans given on the command line: ``--keep 4:0.7,7:96,10:0.7``.

Blocks are numbered from 1, as people count them ("drop tokens after block 4"). A keep value
≥ 1 is a patch-token count; a value < 1 is a rate of the patch tokens entering that block.
"""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import TokenStep, ViTSpec, keep_count
from vitdeploy.models.vit import ViT


def parse_keep(text: str) -> dict[int, float]:
    """'4:0.7,7:96' → {3: 0.7, 6: 96.0} (0-based block index → count or rate)."""
    plan: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        block, sep, value = item.partition(":")
        try:
            index, amount = int(block) - 1, float(value)
        except ValueError:
            index = amount = None
        if not sep or index is None:
            raise VitDeployError(f"--keep item {item!r} is not BLOCK:KEEP (e.g. 4:0.7 or 4:137)")
        if index in plan:
            raise VitDeployError(f"--keep names block {index + 1} twice")
        plan[index] = amount
    if not plan:
        raise VitDeployError("--keep is empty; give BLOCK:KEEP pairs such as 4:0.7,7:0.7,10:0.7")
    return plan


def keep_plan_spec(spec: ViTSpec, plan: dict[int, float], selector: str = "cls_attn",
                   package: bool = False) -> ViTSpec:
    """The spec with score-based token steps after the planned blocks (replacing any old plan)."""
    steps, n = {}, spec.num_patches
    for index in range(spec.depth):
        if index in plan:
            count = keep_count(plan[index], n)
            if count > n:
                raise VitDeployError(f"block {index + 1}: keep={count} is more than the {n} patch tokens entering it")
            steps[index] = TokenStep(keep=count, selector=selector, package=package)
            n = count
    return spec.with_token_plan(steps)


def with_spec(model: ViT, spec: ViTSpec) -> ViT:
    """A model with a new token plan and the same weights (token steps add no parameters)."""
    new = ViT(spec)
    new.load_state_dict(model.state_dict())
    return new.eval()


def apply_keep_plan(model: ViT, text: str, package: bool = False) -> ViT:
    return with_spec(model, keep_plan_spec(model.spec, parse_keep(text), package=package))

"""``fixed``: the same constant positions for every image (Patch Slimming, random baselines):
a Gather with constant indices, no scores."""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.tokens.selectors import SELECTORS, TokenSelector


@SELECTORS.register
class FixedPositions(TokenSelector):
    name = "fixed"
    scored = False
    fields = ("positions",)

    def validate(self, step, index, n_in, spec, block_spec) -> None:
        positions = step.positions or []
        if len(positions) != step.keep:
            raise VitDeployError(f"block {index}: fixed selector lists {len(positions)} positions but keep={step.keep}")
        if len(set(positions)) != len(positions) or not all(
                isinstance(p, int) and 0 <= p < n_in for p in positions):
            raise VitDeployError(f"block {index}: fixed positions must be distinct indices in 0..{n_in - 1}")
        if step.package:
            raise VitDeployError(f"block {index}: a fixed selector has no scores for a package token")

    def attach(self, block, step, block_spec, spec) -> None:
        import torch

        block.register_buffer("keep_positions", torch.tensor(step.positions), persistent=False)

    def gather(self, block, patches, positions):
        from vitdeploy.tokens import select

        kept = select.gather_fixed(patches, block.keep_positions)
        return kept, None if positions is None else positions.index_select(1, block.keep_positions)

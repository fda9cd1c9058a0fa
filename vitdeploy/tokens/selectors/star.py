"""``star``: STAR's fusion S_intra^α · S_inter^(1−α) of the class token's attention with offline
per-position scores (the model tracks each token's original position); with ``adaptive_rate``
(a-STAR) the count depends on the input."""

from __future__ import annotations

import math

from vitdeploy.errors import VitDeployError
from vitdeploy.tokens.selectors import SELECTORS, TokenSelector


@SELECTORS.register
class Star(TokenSelector):
    name = "star"
    needs_cls_attention = True
    tracks_positions = True
    fields = ("alpha", "inter_scores", "adaptive_rate")

    def validate(self, step, index, n_in, spec, block_spec) -> None:
        if not (isinstance(step.alpha, (int, float)) and 0 <= step.alpha <= 1):
            raise VitDeployError(f"block {index}: the star selector needs alpha in [0, 1]")
        scores = step.inter_scores or []
        if len(scores) != spec.num_patches or not all(
                isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in scores):
            raise VitDeployError(f"block {index}: the star selector needs {spec.num_patches} positive inter_scores, "
                                 "one per patch position")
        if step.adaptive:
            if not (isinstance(step.adaptive_rate, (int, float)) and 0 < step.adaptive_rate <= 1):
                raise VitDeployError(f"block {index}: adaptive_rate must be in (0, 1]")
            if step.package:
                raise VitDeployError(f"block {index}: an adaptive (a-STAR) step cannot add a package token")

    def attach(self, block, step, block_spec, spec) -> None:
        import torch

        prior = torch.tensor(step.inter_scores, dtype=torch.float32) ** (1.0 - step.alpha)
        block.register_buffer("inter_prior", prior, persistent=False)

    def scores(self, block, cls_scores, positions, patches):
        from vitdeploy.tokens import select

        return select.star_scores(cls_scores, block.inter_prior, positions, block.step.alpha)

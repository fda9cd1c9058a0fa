"""``cls_attn``: rank patch tokens by the class token's attention to them (EViT, the baselines)."""

from __future__ import annotations

from vitdeploy.tokens.selectors import SELECTORS, TokenSelector


@SELECTORS.register
class ClassAttention(TokenSelector):
    name = "cls_attn"
    needs_cls_attention = True

    def scores(self, block, cls_scores, positions, patches):
        return cls_scores

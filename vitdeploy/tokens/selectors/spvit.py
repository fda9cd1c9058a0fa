"""``spvit``: a learned SPViT selector inside the block ranks tokens by log T − log(1 − T); the
package token weighs dropped tokens by T itself."""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.tokens.selectors import SELECTORS, TokenSelector


@SELECTORS.register
class SPViT(TokenSelector):
    name = "spvit"
    fields = ("selector_heads",)

    def validate(self, step, index, n_in, spec, block_spec) -> None:
        heads = step.selector_heads
        if heads is not None and not (isinstance(heads, int) and heads > 0):
            raise VitDeployError(f"block {index}: selector_heads is a positive count, for the spvit selector only")
        heads = heads or block_spec.heads
        if spec.embed_dim % heads:
            raise VitDeployError(f"block {index}: the SPViT selector splits embed_dim {spec.embed_dim} into {heads} "
                                 "heads, which must divide it")

    def attach(self, block, step, block_spec, spec) -> None:
        from vitdeploy.tokens.spvit import SPViTSelector

        block.selector = SPViTSelector(spec.embed_dim, step.selector_heads or block_spec.heads)

    def scores(self, block, cls_scores, positions, patches):
        return block.selector.keep_logit(patches)

    def package_weights(self, scores):
        return scores.sigmoid()

    def score_macs(self, spec, block_spec, tokens, patches) -> int:
        from vitdeploy.tokens.spvit import SPViTSelector

        return patches * SPViTSelector.macs_per_token(spec.embed_dim, block_spec.tokens.selector_heads or block_spec.heads)

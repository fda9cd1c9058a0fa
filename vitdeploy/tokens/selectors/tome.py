"""``tome``: token merging (ToMe). Between attention and MLP the block merges ``n − keep`` patch
tokens into their most similar partners (``vitdeploy.tokens.merge``); from the first merge on,
every block's attention is proportional to the tokens' sizes."""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.tokens.selectors import SELECTORS, TokenSelector


@SELECTORS.register
class TokenMerging(TokenSelector):
    name = "tome"
    merges = True

    @staticmethod
    def most_merged(n_in: int) -> int:
        """The most tokens a block can merge: one per token of the smaller set, B."""
        return n_in // 2

    def validate(self, step, index, n_in, spec, block_spec) -> None:
        if n_in - step.keep > self.most_merged(n_in):
            raise VitDeployError(f"block {index}: ToMe merges at most {self.most_merged(n_in)} of the {n_in} patch "
                                 f"tokens entering it (one per token of the smaller set), not {n_in - step.keep}")
        if step.package:
            raise VitDeployError(f"block {index}: a tome step merges tokens; it has no package token")
        others = sorted({b.tokens.selector for b in spec.blocks if b.tokens.active} - {self.name})
        if others:
            raise VitDeployError(f"block {index}: ToMe steps cannot share a model with {', '.join(others)} steps: "
                                 "merging changes the tokens those steps score")

    def merge(self, block, x, keys, sizes, selection):
        from vitdeploy.tokens.merge import merge_tokens

        r = block.patch_tokens_in - block.step.keep
        return merge_tokens(x, keys, sizes, r, block.num_prefix, selection)

    def score_macs(self, spec, block_spec, tokens, patches) -> int:
        """The A × B key similarities, and the one-hot MatMuls of the merge: each of the r merged
        tokens reads its partner (token and size) and adds its move back, over the N − r outputs."""
        set_a, set_b = (patches + 1) // 2, patches // 2
        merged = patches - block_spec.tokens.keep
        return set_a * set_b * block_spec.qk_dim + 2 * merged * (tokens - merged) * (spec.embed_dim + 1)

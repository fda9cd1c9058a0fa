"""Token selectors: how a block's token step chooses the patch tokens that survive.

Each selector is one module in this package that registers a ``TokenSelector`` class with
``@SELECTORS.register`` (installed packages use the entry-point group ``vitdeploy.token_selectors``): which
``TokenStep`` fields it owns and how it validates them, the state it adds to a block (buffers or
a module), how it scores patch tokens, and what the scoring costs in MACs. The spec, the model
and the FLOPs count hand off to it, so a new selector is one file plus its test. Modules import
torch only inside their methods: the spec layer validates without it.
"""

from __future__ import annotations

from vitdeploy.registry import Registry

STEP_FIELDS = ("positions", "alpha", "inter_scores", "adaptive_rate", "selector_heads")
"""``TokenStep`` fields that belong to one selector each (None unless that selector is used)."""


class TokenSelector:
    """The protocol; subclasses override what differs. ``block`` is the model's ``Block``."""

    name: str = ""
    scored = True
    """False when the step keeps constant positions and has no per-token scores."""
    needs_cls_attention = False
    """The block computes the class token's attention row for this step's scores."""
    tracks_positions = False
    """Scores depend on each token's original patch position, which the model then tracks."""
    merges = False
    """The step merges tokens between attention and MLP (ToMe), with the attention's keys and
    the tokens' sizes, instead of dropping them after the block."""
    fields: tuple[str, ...] = ()
    """The ``STEP_FIELDS`` this selector owns."""

    def validate(self, step, index: int, n_in: int, spec, block_spec) -> None:
        """Raise ``VitDeployError`` for a bad step; ``index`` counts blocks from 1."""

    def attach(self, block, step, block_spec, spec) -> None:
        """Give ``block`` the buffers or modules the scores need."""

    def scores(self, block, cls_scores, positions, patches):
        """Per-patch scores (B, N): higher keeps."""
        raise NotImplementedError

    def package_weights(self, scores):
        """Weights of the dropped tokens in the package token (SPViT's P = Σ n_i·m_i / Σ m_i)."""
        return scores

    def gather(self, block, patches, positions):
        """Unscored selectors: (kept patches, their positions or None)."""
        raise NotImplementedError

    def merge(self, block, x, keys, sizes, selection):
        """Merging selectors: (tokens, sizes) after merging, from the tokens after attention."""
        raise NotImplementedError

    def score_macs(self, spec, block_spec, tokens: int, patches: int) -> int:
        """MACs of scoring one image's tokens: by default the class-attention row, H·N·qk."""
        return block_spec.heads * tokens * block_spec.qk_dim if self.scored else 0


SELECTORS: Registry[TokenSelector] = Registry("token selector", group="vitdeploy.token_selectors",
                                              package=__name__, instances=True)

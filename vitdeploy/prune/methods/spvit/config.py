"""Settings of SPViT soft token pruning (a light module: the CLI reads its defaults without
importing torch). See ``vitdeploy.prune.methods.spvit.algorithm`` for the method."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import PACKAGE_MODES, phase_blocks
from vitdeploy.schema import check_fields, named, schema

Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]

FLAT_SCORES = 1e-3
"""A selector whose ranking logits spread less than this across tokens (``spvit.score_spreads``)
picks its top-k by rounding noise."""
RUN_IDENTITY_EXCLUDES = ("epochs", "threads", "resume")
"""Fields a resumed run may change; every other field must match the checkpoint's."""


@schema
@dataclass
class SPViTConfig:
    budget_flops: Annotated[float, Field(gt=0, le=1)] = 0.6
    """Target MACs of the static inference model as a ratio of the unpruned model's, in (0, 1].
    The selectors' keep targets ρ_i are derived from it (see ``spvit.keep_ratios``)."""
    selectors: tuple[int, ...] | None = None
    """Blocks (1-based) after which a selector drops tokens; None = ¼, ½ and ¾ of the depth, the
    paper's 3, 6, 9 for 12 blocks (2, 3, 4 for the 6-block Fashion-MNIST model)."""
    epochs: Count = 3
    batch_size: Count = 64
    lr_selector: Annotated[float, Field(gt=0)] = 2e-2
    lr_backbone: NonNegative = 5e-5
    """The paper trains 30+ ImageNet epochs (thousands of steps each) with 5e-4 for the selectors
    and 5e-6 for the backbone. Our runs are a few hundred steps. On Fashion-MNIST (0.5× budget,
    157-470 steps), at 5e-4 the keep rates barely moved (ratio loss 0.36 → 0.35 in 40 steps); at
    5e-3 the selectors met the keep targets with an almost constant T (spread across tokens ≈ 0.01,
    so training dropped tokens at random); at 2e-2 they learn to rank tokens (spread 0.11 after
    selector 1); at 5e-2 and above T saturates within an epoch. 5e-5 for the backbone is 10× the
    paper's; 5e-6 leaves it practically unchanged."""
    weight_decay: NonNegative = 0.05
    lambda_kl: NonNegative = 0.5
    lambda_distill: NonNegative = 0.5
    lambda_ratio: NonNegative = 2.0
    """The paper's 2. In our short runs the task losses' pull to keep tokens (≈10× the ratio loss's
    gradient near the targets) can win at 2: the ratio loss then creeps up epoch by epoch
    (0.025 → 0.27 → 0.41 in three epochs at 0.5×) while T saturates. 10 held the targets
    (ratio loss ≤ 0.003); benchmarks/spvit_fmnist.py reports both."""
    gumbel_tau: Annotated[float, Field(gt=0)] = 1.0
    """Temperature of the Gumbel-softmax keep/drop decisions (DynamicViT's default, 1)."""
    package: bool = True
    """Fold each step's dropped tokens into a package token (False: drop them, an ablation)."""
    package_mode: str = "add"
    """``add``: one package token, each step's added to it (the paper's variant); ``concat``: one more
    package token per step."""
    selector_heads: Count | None = None
    """Heads of the selectors; None = the block's heads (multi-head), 1 = a single-head ablation."""
    crop_padding: Annotated[int, Field(ge=0)] = 0
    """Random shift in pixels during training (0 = off); horizontal flips are always on."""
    limit: Count | None = None
    """Train on the first N images of the training data only (None = all)."""
    val_size: Count = 5000
    """The last N images of the training data, held out to choose the best epoch."""
    seed: int = 0
    threads: Count = 2
    resume: bool = True
    """Continue from the checkpoint in the output directory when there is one of the same run."""

    def validate(self, depth: int | None = None) -> SPViTConfig:
        """Raise ``VitDeployError`` on a bad setting; with ``depth``, check the selector blocks too."""
        check_fields(self)
        if self.package_mode not in PACKAGE_MODES:
            raise VitDeployError(f"{named('package_mode')} must be one of {', '.join(PACKAGE_MODES)}, got "
                                 f"{self.package_mode!r}")
        if depth is not None:
            self.selector_blocks(depth)
        return self

    def selector_blocks(self, depth: int) -> list[int]:
        """0-based indices of the blocks that get a selector, in order."""
        if self.selectors is None:
            return phase_blocks(depth)
        blocks = sorted(set(self.selectors))
        if not blocks or blocks[0] < 1 or blocks[-1] > depth - 1 or len(blocks) != len(self.selectors):
            raise VitDeployError(f"--selectors {','.join(map(str, self.selectors))}: give distinct blocks in "
                                 f"1..{depth - 1} (the model has {depth} blocks and nothing reads the tokens "
                                 "after the last one)")
        return [b - 1 for b in blocks]

    def run_identity(self) -> dict:
        """The settings a checkpoint must share with this config to be resumed by it."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_IDENTITY_EXCLUDES}


def parse_selectors(text: str) -> tuple[int, ...]:
    """'3,6,9' → (3, 6, 9): 1-based blocks for ``SPViTConfig.selectors``."""
    try:
        blocks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise VitDeployError(f"--selectors {text!r}: give block numbers such as 3,6,9") from None
    if not blocks:
        raise VitDeployError("--selectors is empty: give block numbers such as 3,6,9")
    return blocks

"""Settings of SPViT soft token pruning (a light module: the CLI reads its defaults without
importing torch). See ``vitdeploy.prune.spvit`` for the method."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import schema
from vitdeploy.models.spec import PACKAGE_MODES, phase_blocks

FLAT_SCORES = 1e-3
"""A selector whose ranking logits spread less than this across tokens (``spvit.score_spreads``)
picks its top-k by rounding noise."""
RUN_IDENTITY_EXCLUDES = ("epochs", "threads", "resume")
"""Fields a resumed run may change; every other field must match the checkpoint's."""


@schema
@dataclass
class SPViTConfig:
    budget_flops: float = 0.6
    """Target MACs of the static inference model as a ratio of the unpruned model's, in (0, 1].
    The selectors' keep targets ρ_i are derived from it (see ``spvit.keep_ratios``)."""
    selectors: tuple[int, ...] | None = None
    """Blocks (1-based) after which a selector drops tokens; None = ¼, ½ and ¾ of the depth, the
    paper's 3, 6, 9 for 12 blocks (2, 3, 4 for the 6-block Fashion-MNIST model)."""
    epochs: int = 3
    batch_size: int = 64
    lr_selector: float = 2e-2
    lr_backbone: float = 5e-5
    """The paper trains 30+ ImageNet epochs (thousands of steps each) with 5e-4 for the selectors
    and 5e-6 for the backbone. Our runs are a few hundred steps. On Fashion-MNIST (0.5× budget,
    157-470 steps), at 5e-4 the keep rates barely moved (ratio loss 0.36 → 0.35 in 40 steps); at
    5e-3 the selectors met the keep targets with an almost constant T (spread across tokens ≈ 0.01,
    so training dropped tokens at random); at 2e-2 they learn to rank tokens (spread 0.11 after
    selector 1); at 5e-2 and above T saturates within an epoch. 5e-5 for the backbone is 10× the
    paper's; 5e-6 leaves it practically unchanged."""
    weight_decay: float = 0.05
    lambda_kl: float = 0.5
    lambda_distill: float = 0.5
    lambda_ratio: float = 2.0
    """The paper's 2. In our short runs the task losses' pull to keep tokens (≈10× the ratio loss's
    gradient near the targets) can win at 2: the ratio loss then creeps up epoch by epoch
    (0.025 → 0.27 → 0.41 in three epochs at 0.5×) while T saturates. 10 held the targets
    (ratio loss ≤ 0.003); benchmarks/spvit_fmnist.py reports both."""
    gumbel_tau: float = 1.0
    """Temperature of the Gumbel-softmax keep/drop decisions (DynamicViT's default, 1)."""
    package: bool = True
    """Fold each step's dropped tokens into a package token (False: drop them, an ablation)."""
    package_mode: str = "add"
    """``add``: one package token, each step's added to it (the paper's variant); ``concat``: one more
    package token per step."""
    selector_heads: int | None = None
    """Heads of the selectors; None = the block's heads (multi-head), 1 = a single-head ablation."""
    crop_padding: int = 0
    """Random shift in pixels during training (0 = off); horizontal flips are always on."""
    limit: int | None = None
    """Train on the first N images of the training data only (None = all)."""
    val_size: int = 5000
    """The last N images of the training data, held out to choose the best epoch."""
    seed: int = 0
    threads: int = 2
    resume: bool = True
    """Continue from the checkpoint in the output directory when there is one of the same run."""

    def validate(self, depth: int | None = None) -> SPViTConfig:
        """Raise ``VitDeployError`` on a bad setting; with ``depth``, check the selector blocks too."""
        if not 0 < self.budget_flops <= 1:
            raise VitDeployError(f"--budget-flops is a ratio of the unpruned model's FLOPs in (0, 1], "
                                 f"got {self.budget_flops}")
        if min(self.epochs, self.batch_size, self.threads) < 1:
            raise VitDeployError("--epochs, --batch-size and --threads must be at least 1")
        if not (self.lr_selector > 0 and self.lr_backbone >= 0 and self.weight_decay >= 0):
            raise VitDeployError("the selector learning rate must be positive, the backbone's and the weight "
                                 "decay at least 0")
        if self.lambda_ratio < 0:
            raise VitDeployError(f"--lambda-ratio must be at least 0, got {self.lambda_ratio}")
        if min(self.lambda_kl, self.lambda_distill) < 0 or not self.gumbel_tau > 0:
            raise VitDeployError("the loss weights must be at least 0 and the Gumbel temperature positive")
        if self.package_mode not in PACKAGE_MODES:
            raise VitDeployError(f"--package-mode must be one of {', '.join(PACKAGE_MODES)}, got {self.package_mode!r}")
        if self.selector_heads is not None and self.selector_heads < 1:
            raise VitDeployError(f"--selector-heads must be at least 1, got {self.selector_heads}")
        if self.limit is not None and self.limit < 1:
            raise VitDeployError(f"--limit must be a positive number of images, got {self.limit}")
        if self.val_size < 1:
            raise VitDeployError(f"--val-size must be a positive number of images, got {self.val_size}")
        if self.crop_padding < 0:
            raise VitDeployError(f"--crop-padding must be at least 0, got {self.crop_padding}")
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

"""Calibration passes shared by the token-pruning methods.

``trace`` runs an unpruned ViT with *explicit* attention, returning every block's input tokens
and attention probabilities (B, H, N, N). It is for calibration only: inference keeps attention
fused. With ``requires_grad`` the probabilities stay in the autograd graph, so a backward pass
gives ∂output/∂A (STAR's inter-layer relevance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitdeploy.errors import VitDeployError
from vitdeploy.data import dataset_for
from vitdeploy.models.vit import ViT


@dataclass
class Trace:
    inputs: list[torch.Tensor]
    """Tokens entering each block, (B, N, D)."""
    attention: list[torch.Tensor]
    """Each block's attention probabilities, (B, H, N, N)."""
    last_output: torch.Tensor
    """Tokens leaving the last block, before the final norm."""
    features: torch.Tensor
    """The final tokens after the last norm, (B, N, D)."""
    logits: torch.Tensor

    @property
    def outputs(self) -> list[torch.Tensor]:
        """Tokens leaving each block."""
        return self.inputs[1:] + [self.last_output]


def calibration_images(model: ViT, source: str, size: int, seed: int = 0, resize: bool = False) -> torch.Tensor:
    """``size`` images drawn at random (seeded) from the train split of ``source``, as model inputs."""
    if size < 1:
        raise VitDeployError(f"--calib-size must be at least 1, got {size}")
    dataset = dataset_for(model, source, "train", resize=resize)
    if len(dataset) < size:
        raise VitDeployError(f"{source}: the train split has {len(dataset)} images, fewer than --calib-size {size}")
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
    indices = indices.sort().values
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)[0]
    return torch.stack([dataset[i][0] for i in indices.tolist()])


def require_dense_tokens(model: ViT) -> None:
    if any(b.tokens.active for b in model.spec.blocks):
        raise VitDeployError("token methods plan on a model without a token plan; this one already drops or "
                             "merges tokens (start from the unpruned model)")


def trace(model: ViT, images: torch.Tensor, requires_grad: bool = False) -> Trace:
    """Run ``model`` (no token steps) with explicit attention; see the module docstring."""
    require_dense_tokens(model)
    inputs, attention = [], []
    with torch.set_grad_enabled(requires_grad):
        x = model.embed(images)
        for block in model.blocks:
            inputs.append(x)
            x, probs = block.residual(x, block.attn.explicit)
            if requires_grad:
                probs.retain_grad()
            attention.append(probs)
        features = model.norm(x)
        logits = model.classify(features)
    return Trace(inputs, attention, x, features, logits)


def run_blocks(model: ViT, x: torch.Tensor, start: int, keep: dict[int, torch.Tensor]) -> torch.Tensor:
    """Final features of an unpruned ``model`` run from block ``start`` (0-based) on tokens ``x``,
    keeping after block j only the prefix tokens and the patch positions ``keep[j]`` (sorted
    indices into the patches of the *original* image). Simulates a fixed-position plan without
    building a new model."""
    prefix = model.spec.num_prefix_tokens
    current = torch.arange(model.spec.num_patches)
    for j in range(start, model.spec.depth):
        x = model.blocks[j](x)[0]
        if j in keep:
            rows = torch.searchsorted(current, keep[j])
            x = torch.cat([x[:, :prefix], x[:, prefix + rows]], dim=1)
            current = keep[j]
    return model.norm(x)

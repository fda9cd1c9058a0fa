import subprocess
import sys

import pytest
import torch

from vitdeploy.models.spec import ViTSpec, uniform_blocks
from vitdeploy.models.vit import ViT


def tiny_spec(**overrides) -> ViTSpec:
    """A 4-block ViT on 32×32 inputs with 16 patch tokens: fast enough for every test."""
    fields = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, num_classes=5,
                  blocks=uniform_blocks(4, 32, 2), name="tiny")
    fields.update(overrides)
    return ViTSpec(**fields).validate()


def tiny_model(spec: ViTSpec | None = None, seed: int = 0) -> ViT:
    model = ViT(spec or tiny_spec())
    model.reset_parameters(seed)
    with torch.no_grad():  # larger weights than timm's init, so token scores differ clearly
        for p in model.parameters():
            p.mul_(3)
    return model.eval()


@pytest.fixture
def tiny():
    return tiny_model()


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """The real ``vitdeploy`` entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "vitdeploy.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)

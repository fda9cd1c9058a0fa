"""Our ViT against timm's outputs, from golden files made by scripts/make_timm_golden.py.

CI does not need timm: the golden files are committed. Where timm imports (the GPU machine),
a second test compares against timm live.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitdeploy.models.checkpoint import load_timm_checkpoint
from vitdeploy.models.spec import ViTSpec, uniform_blocks

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CONFIGS = json.loads((GOLDEN / "golden.json").read_text())["configs"]


def spec_for(name: str) -> ViTSpec:
    """The spec of a golden config, from the timm kwargs that made it (heads leave no trace in shapes)."""
    config = CONFIGS[name]
    kwargs = config["kwargs"]
    return ViTSpec(img_size=kwargs["img_size"], patch_size=kwargs["patch_size"], in_chans=3,
                   embed_dim=kwargs["embed_dim"], num_classes=kwargs["num_classes"],
                   blocks=uniform_blocks(kwargs["depth"], kwargs["embed_dim"], kwargs["num_heads"]),
                   distilled="distilled" in config["timm_model"])


def load_golden_model(name: str):
    return load_timm_checkpoint(GOLDEN / f"{name}.safetensors", spec_for(name))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_timm_golden_outputs(name):
    model = load_golden_model(name)
    io = load_file(str(GOLDEN / f"{name}.io.safetensors"))
    with torch.no_grad():
        out = model(io["input"])
    assert out.shape == io["output"].shape
    assert (out - io["output"]).abs().max().item() <= 1e-5
    assert io["output"].abs().mean() > 0.1  # the comparison is not between near-zero outputs


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_timm_live(name):
    timm = pytest.importorskip("timm")
    config = CONFIGS[name]
    reference = timm.create_model(config["timm_model"], pretrained=False, **config["kwargs"]).eval()
    reference.load_state_dict(load_file(str(GOLDEN / f"{name}.safetensors")))
    model = load_golden_model(name)
    x = torch.randn(2, 3, config["kwargs"]["img_size"], config["kwargs"]["img_size"])
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5

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

GOLDEN = Path(__file__).parent / "golden"
CONFIGS = json.loads((GOLDEN / "golden.json").read_text())["configs"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_timm_golden_outputs(name):
    model = load_timm_checkpoint(GOLDEN / f"{name}.safetensors")
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
    model = load_timm_checkpoint(GOLDEN / f"{name}.safetensors")
    x = torch.randn(2, 3, config["kwargs"]["img_size"], config["kwargs"]["img_size"])
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5

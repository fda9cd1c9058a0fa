"""Generate timm golden outputs for the parity test (tests/models/test_timm_parity.py).

Needs timm, so run it where timm imports (the GPU machine, or a throwaway venv holding the
registry's torch + torchvision + timm):

    python3 -m venv /tmp/timmvenv && /tmp/timmvenv/bin/pip install timm safetensors
    /tmp/timmvenv/bin/python scripts/make_timm_golden.py --out tests/golden

For each tiny DeiT config it writes the weights as a timm checkpoint (NAME.safetensors), a fixed
input and timm's eval-mode output (NAME.io.safetensors), and golden.json with the versions used.
Weights are re-drawn at a larger scale than timm's init so the outputs are O(1) and a 1e-5
comparison is meaningful.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

SMALL = dict(img_size=32, patch_size=8, depth=2, embed_dim=128, num_heads=2, num_classes=10)
CONFIGS = {
    "deit_tiny_small_input": ("deit_tiny_patch16_224", SMALL),
    "deit_tiny_distilled_small_input": ("deit_tiny_distilled_patch16_224", SMALL),
}


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.1 * noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/golden"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {"timm": timm.__version__, "torch": torch.__version__, "configs": {}}
    for index, (name, (arch, kwargs)) in enumerate(CONFIGS.items()):
        generator = torch.Generator().manual_seed(index)
        model = timm.create_model(arch, pretrained=False, **kwargs).eval()
        randomize(model, generator)
        x = torch.randn(3, 3, kwargs["img_size"], kwargs["img_size"], generator=generator)
        with torch.no_grad():
            y = model(x)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / f"{name}.safetensors"))
        save_file({"input": x, "output": y.contiguous()}, str(args.out / f"{name}.io.safetensors"))
        manifest["configs"][name] = {"timm_model": arch, "kwargs": kwargs}
    (args.out / "golden.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()

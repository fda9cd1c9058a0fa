"""Inputs the CLI catalogue tests build once: a tiny model directory, DeiT-shaped checkpoints, a latency table."""

from __future__ import annotations

import argparse
import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import tiny_model, tiny_spec
from tests.lut.synthetic import table_for_this_machine
from vitdeploy.lut.table import save_table
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.models.spec import uniform_blocks
from vitdeploy.models.vit import ViT

REPO = Path(__file__).resolve().parents[2]
SHIPPED_TABLE = REPO / "latency_tables" / "amd-epyc-onnxruntime-fp32.json"
DEIT_WIDTH = 192
"""DeiT-Tiny's width, whose standard head count (3) timm's config may contradict."""


def deit_shaped_state() -> dict[str, torch.Tensor]:
    """A 2-block, 32×32-input state dict in timm's key layout with DeiT-Tiny's width (a fresh copy)."""
    return {k: v.clone() for k, v in _deit_shaped_model().state_dict().items()}


@functools.cache
def _deit_shaped_model() -> ViT:
    return ViT(tiny_spec(embed_dim=DEIT_WIDTH, blocks=uniform_blocks(2, DEIT_WIDTH, 3)))


def timm_config(**model_args) -> dict:
    """A timm hub ``config.json`` for the DeiT-shaped state dict, with the given model arguments."""
    return {"architecture": "vit_custom_patch8_32", "num_classes": 5,
            "model_args": {"embed_dim": DEIT_WIDTH, "depth": 2, "patch_size": 8, "img_size": 32, **model_args},
            "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9}}


def training_checkpoint(**args) -> dict:
    """What DeiT's main.py saves: weights under 'model' and the run's argparse.Namespace under 'args'."""
    return {"model": deit_shaped_state(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
            "args": argparse.Namespace(model="deit_tiny_patch16_224", lr=5e-4, **args)}


class Assets:
    """Files built once per session; ``put`` copies one into a case's working directory."""

    def __init__(self, root: Path):
        self.root = root
        save_artifact(tiny_model(), root / "tiny")
        save_file(deit_shaped_state(), str(root / "deit.safetensors"))
        shutil.copy(SHIPPED_TABLE, root / "table.json")
        save_table(table_for_this_machine(tiny_spec()), root / "tiny-table.json")

    def put(self, name: str, w: Path, as_name: str | None = None) -> Path:
        source, target = self.root / name, w / (as_name or name)
        shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
        return target

    def json(self, name: str) -> dict:
        return json.loads((self.root / name).read_text())


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    return Assets(tmp_path_factory.mktemp("catalogue-assets"))

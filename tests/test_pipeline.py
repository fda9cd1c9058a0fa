"""The shipped reference model, the training loop and the default recipe, on real Fashion-MNIST."""

import json
from pathlib import Path

import pytest
import torch

from vitdeploy.evaluate import EvalOptions, evaluate_model
from vitdeploy.models.vit import ViT
from vitdeploy.models.zoo import REFERENCE_MODEL, create_model, get_spec, shipped_weights_dir
from vitdeploy.pipeline import load_recipe, run_recipe
from vitdeploy.train.loop import TrainConfig, train

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]


def test_reference_weights_ship_with_the_package():
    assert shipped_weights_dir(REFERENCE_MODEL) is not None
    assert create_model(REFERENCE_MODEL).spec == get_spec(REFERENCE_MODEL)


@needs_fmnist
def test_shipped_model_reaches_88_percent_and_onnx_agrees():
    report = evaluate_model(create_model(REFERENCE_MODEL), EvalOptions())
    assert report["images"] == 10_000
    assert report["torch_top1"] >= 0.88
    assert report["onnx_torch_agreement"] >= 0.999


@needs_fmnist
def test_training_learns_from_a_small_subset():
    model = ViT(get_spec(REFERENCE_MODEL))
    model.reset_parameters(0)
    report = train(model, TrainConfig(epochs=2, limit=2000, batch_size=64, lr=2e-3, warmup_epochs=0.2), progress=False)
    assert report["history"][-1]["test_top1"] > 0.5  # chance is 0.1
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]


@needs_fmnist
def test_default_recipe_exports_and_evaluates_every_variant(tmp_path):
    summary = run_recipe(load_recipe(ROOT / "export" / "default.json"), tmp_path, limit=500)
    names = [v["variant"] for v in summary["variants"]]
    assert names[0] == "baseline" and len(names) >= 2
    for variant in summary["variants"]:
        assert variant["audit_passed"] and variant["parity_max_abs_diff"] <= 1e-4
        assert variant["agreement"] >= 0.99
        assert (tmp_path / variant["variant"] / "model.onnx").is_file()
    assert all(v["macs_ratio"] < 1 for v in summary["variants"][1:])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

"""The shipped reference model, the training loop and the default recipe, on real Fashion-MNIST."""

import json
from pathlib import Path

import pytest

from vitdeploy.errors import VitDeployError
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
    report = train(model, TrainConfig(epochs=3, limit=4000, batch_size=64, lr=2e-3, warmup_epochs=0.2), progress=False)
    assert report["history"][-1]["test_top1"] > 0.4  # chance is 0.1
    assert report["history"][-1]["test_top1"] > report["history"][0]["test_top1"]


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


@pytest.mark.parametrize("recipe, message", [
    ({"name": "r", "model": "fmnist_vit", "token_plan": []}, "unknown keys: token_plan"),
    ({"name": "r"}, "missing keys: model"),
    ({"name": "r", "model": "m", "token_plans": [{"name": "a", "keep": 5}]}, "keep must be a string"),
    ({"name": "r", "model": "fmnist_vit", "token_plans": [{"name": "a", "keep": "2:0"}]}, "keep=0 must be"),
    ({"name": "r", "model": "fmnist_vit", "token_plans": [{"name": "a", "keep": "9:0.5"}]}, "block 9 does not"),
    ({"name": "r", "model": "m", "token_plans": [{"name": "../x", "keep": "2:5"}]}, "must be letters"),
    ({"name": "r", "model": "m", "token_plans": [{"name": "baseline", "keep": "2:5"}]}, "unique"),
    ({"name": "r", "model": "m", "export": {"example_batch": 1}}, "stays dynamic"),
    ({"name": "r", "model": "m", "export": {"opsett": 18}}, "bad export settings"),
])
def test_bad_recipes_fail_before_any_work(tmp_path, recipe, message):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(VitDeployError, match=message):
        run_recipe(load_recipe(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_fmnist
def test_eval_refuses_an_onnx_of_another_shape(tmp_path):
    from tests.conftest import tiny_model
    from vitdeploy.export.onnx import export_onnx

    export_onnx(tiny_model(), tmp_path / "other.onnx")
    options = EvalOptions(limit=8, onnx_path=str(tmp_path / "other.onnx"))
    with pytest.raises(VitDeployError, match="expects inputs of shape"):
        evaluate_model(create_model(REFERENCE_MODEL), options)

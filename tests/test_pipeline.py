"""The shipped reference model, the training loop and the default recipe, on real Fashion-MNIST."""

import json
from pathlib import Path

import pytest

from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import EvalOptions, evaluate_model
from vitdeploy.models.vit import ViT
from vitdeploy.models.architectures import REFERENCE_MODEL, get_spec
from vitdeploy.models.zoo import create_model, shipped_weights_dir
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
    ({"name": "r", "model": "fmnist_vit", "token_plan": []}, "token_plan: Unexpected keyword argument"),
    ({"name": "r"}, "model: Field required"),
    ({"name": "r", "model": "m", "variants": [{"name": "a", "keep": 5}]}, r"variants\.0\.keep: Input should be a valid string"),
    ({"name": "r", "model": "fmnist_vit", "variants": [{"name": "a", "keep": "2:0"}]}, "keep=0 must be"),
    ({"name": "r", "model": "fmnist_vit", "variants": [{"name": "a", "keep": "9:0.5"}]}, "block 9 does not"),
    ({"name": "r", "model": "m", "variants": [{"name": "../x", "keep": "2:5"}]}, "letters, digits"),
    ({"name": "r", "model": "m", "variants": [{"name": "baseline", "keep": "2:5"}]}, "unique"),
    ({"name": "r", "model": "m", "export": {"example_batch": 1}}, "export: example_batch: Input should be greater"),
    ({"name": "r", "model": "m", "export": {"opsett": 18}}, "export: opsett"),
    ({"name": "r", "model": "m", "variants": [{"name": "a", "prune": [{"method": "magic"}]}]}, "unknown pruning method"),
    ({"name": "r", "model": "m", "variants": [{"name": "a", "prune": [{"method": "star", "data": "d",
                                                                        "settings": {"rho": 0.5, "eta": 1}}]}]},
     "unknown settings eta"),
    ({"name": "r", "model": "m", "variants": [{"name": "a", "prune": [{"method": "star", "settings": {"rho": 0.5}}]}]},
     "needs \"data\""),
    ({"name": "r", "model": "m", "variants": [{"name": "a", "prune": [{"method": "nvit", "data": "d",
                                                                        "settings": {"eta": "high"}}]}]},
     "prune stage 1 \\(nvit\\): eta: Input should be a valid number"),
    ({"name": "r", "model": "m", "bench": {"iters": 1e9999}}, "bench.iters"),
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


def _write_recipe(path, **fields):
    path.write_text(json.dumps({"name": "chain", **fields}))
    return path


QUICK_BENCH = {"batch_sizes": [2], "warmup": 1, "iters": 2, "rounds": 1, "threads": 1}


def test_a_recipe_runs_prune_export_and_bench_for_every_variant(tmp_path):
    from tests.conftest import tiny_model
    from vitdeploy.hardware import device_name, device_slug
    from vitdeploy.models.checkpoint import load_artifact, save_artifact

    save_artifact(tiny_model(), tmp_path / "tiny")
    recipe = _write_recipe(tmp_path / "r.json", model=str(tmp_path / "tiny"), eval=False, bench=QUICK_BENCH, variants=[
        {"name": "evit", "prune": [{"method": "cls-attn", "settings": {"rate": 0.5, "package": True}}]},
        {"name": "keep", "keep": "2:0.5"}])
    summary = run_recipe(load_recipe(recipe), tmp_path / "out", command="vitdeploy run r.json --out out")
    assert [v["variant"] for v in summary["variants"]] == ["baseline", "evit", "keep"]
    assert [r["model"] for r in summary["bench"]["rows"]] == ["baseline", "evit", "keep"]
    assert all(r["throughput"] > 0 for r in summary["bench"]["rows"])
    bench_file = tmp_path / "out" / summary["bench"]["result"]
    assert device_slug(device_name("cpu")) in bench_file.name and bench_file.is_file()
    pruned = load_artifact(tmp_path / "out" / "evit" / "model")
    assert any(b.tokens.package for b in pruned.spec.blocks)
    prune_report = json.loads((tmp_path / "out" / "evit" / "model" / "prune.json").read_text())
    assert prune_report["stages"][0]["method"] == "cls-attn"
    assert summary["command"] == "vitdeploy run r.json --out out" and summary["environment"]["cpu"]


def test_a_recipe_that_fails_late_leaves_the_previous_output_intact(tmp_path):
    from tests.conftest import tiny_model
    from vitdeploy.models.checkpoint import save_artifact

    save_artifact(tiny_model(), tmp_path / "tiny")
    good = _write_recipe(tmp_path / "good.json", model=str(tmp_path / "tiny"), eval=False,
                         variants=[{"name": "keep", "keep": "2:0.5"}])
    run_recipe(load_recipe(good), tmp_path / "out")
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    late = _write_recipe(tmp_path / "late.json", model=str(tmp_path / "tiny"), eval=False, variants=[
        {"name": "keep", "keep": "2:0.5"},
        {"name": "star", "prune": [{"method": "star", "data": str(tmp_path / "no-such-data"),
                                    "settings": {"rho": 0.5}}]}])
    with pytest.raises(VitDeployError):
        run_recipe(load_recipe(late), tmp_path / "out")
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "recipes").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.variants


@needs_fmnist
def test_a_variant_chains_structural_then_token_pruning(tmp_path):
    from tests.conftest import tiny_model, tiny_spec
    from vitdeploy.models.checkpoint import load_artifact, save_artifact
    from vitdeploy.models.flops import total_macs

    save_artifact(tiny_model(tiny_spec(num_classes=10)), tmp_path / "tiny")
    nvit = {"method": "nvit", "data": "fashion-mnist", "settings": {
        "target_flops": 0.7, "finetune_steps": 1, "final_finetune_steps": 1, "calib_batches": 1, "batch_size": 8}}
    star = {"method": "star", "data": "fashion-mnist", "settings": {
        "rho": 0.5, "rounds": 1, "calib_batch": 4, "calib_size": 8, "gamma": 2}}
    recipe = _write_recipe(tmp_path / "r.json", model=str(tmp_path / "tiny"), eval=False, resize=True,
                           variants=[{"name": "nvit", "prune": [nvit]}, {"name": "nvit-star", "prune": [nvit, star]}])
    summary = run_recipe(load_recipe(recipe), tmp_path / "out")
    structural = load_artifact(tmp_path / "out" / "nvit" / "model")
    chained = load_artifact(tmp_path / "out" / "nvit-star" / "model")
    assert structural.spec.embed_dim == chained.spec.embed_dim < tiny_model().spec.embed_dim
    assert any(b.tokens.selector == "star" for b in chained.spec.blocks)
    assert total_macs(chained.spec) < total_macs(structural.spec)
    ratios = {v["variant"]: v["macs_ratio"] for v in summary["variants"]}
    assert ratios["nvit-star"] < ratios["nvit"] <= 0.7

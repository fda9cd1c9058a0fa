"""`vitdeploy prune nvit|sparse24|spvit` end to end, and their user errors (exit 2, nothing written)."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_model, tiny_spec
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.models.spec import uniform_blocks

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The tiny test model with a 10-class head, so it can take Fashion-MNIST (with --resize)."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_artifact(tiny_model(tiny_spec(num_classes=10)), path)
    return path


def test_sparse24_writes_a_verified_2_4_model(artifact, tmp_path):
    out = tmp_path / "sparse"
    result = run_cli("prune", "sparse24", artifact, "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "spec.json").read_text())["sparsity"] == "2:4"
    report = json.loads((out / "prune.json").read_text())
    assert report["verified_after"] and report["zeroed"] > 0


@pytest.mark.parametrize("args, message", [
    (["nvit", "--target-flops", "1.5", "--calib", "fashion-mnist"], "error: --target-flops: Input should be less than 1"),
    (["nvit", "--target-flops", "0.5"], "--calib"),
    (["nvit", "--target-latency-ms", "3", "--calib", "fashion-mnist"], "--lut"),
])
def test_nvit_user_errors_exit_2(artifact, tmp_path, args, message):
    out = tmp_path / "p"
    result = run_cli("prune", args[0], artifact, *args[1:], "--out", out)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_sparse24_on_dims_not_multiple_of_16_exits_2(tmp_path):
    path = tmp_path / "odd"
    save_artifact(tiny_model(tiny_spec(embed_dim=24, blocks=uniform_blocks(2, 24, 2))), path)
    result = run_cli("prune", "sparse24", path, "--out", tmp_path / "p")
    assert result.returncode == 2 and "16" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_nvit_prunes_compacts_and_reports(artifact, tmp_path):
    out = tmp_path / "nvit"
    result = run_cli("prune", "nvit", artifact, "--target-flops", "0.7", "--calib", "fashion-mnist",
                     "--resize", "--prune-step", "0.2", "--calib-batches", "1", "--batch-size", "16",
                     "--finetune-steps", "1", "--final-finetune-steps", "1", "--out", out, "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["macs"]["ratio"] <= 0.7 and report["compaction_max_abs_diff"] <= 1e-5
    spec = json.loads((out / "spec.json").read_text())
    assert sum(b["mlp_dim"] for b in spec["blocks"]) + spec["embed_dim"] < 4 * 128 + 32


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_data_with_more_classes_than_the_head_exits_2(tmp_path):
    path = tmp_path / "five"
    save_artifact(tiny_model(), path)
    result = run_cli("eval", path, "--resize", "--limit", "10", "--no-onnx")
    assert result.returncode == 2 and "10 classes" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--selectors", "9"], "--selectors"),
    (["--budget-flops", "0"], "budget"),
    (["--budget-flops", "1.5"], "budget"),
    (["--lambda-ratio", "-1"], "--lambda-ratio"),
    (["--resize", "--val-size", "0"], "--val-size"),
    (["--resize", "--val-size", "60000"], "--val-size"),
])
def test_spvit_user_errors_exit_2(artifact, tmp_path, args, message):
    out = tmp_path / "p"
    result = run_cli("prune", "spvit", artifact, "--data", "fashion-mnist", *args, "--out", out)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_spvit_trains_and_saves_a_static_model(artifact, tmp_path):
    out = tmp_path / "spvit"
    result = run_cli("prune", "spvit", artifact, "--data", "fashion-mnist", "--resize", "--limit", "64",
                     "--val-size", "96", "--eval", "fashion-mnist", "--eval-limit", "64", "--epochs", "1",
                     "--batch-size", "32", "--budget-flops", "0.7", "--out", out, "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "last 96 images" in report["validation"] and 0 <= report["test_top1"] <= 1
    assert report["flops_ratio"] <= 0.7 + 1e-9
    spec = json.loads((out / "spec.json").read_text())
    assert [b["tokens"]["selector"] for b in spec["blocks"] if b["tokens"]["keep"]] == ["spvit"] * len(report["phases"])
    assert (tmp_path / "spvit.spvit-work" / "checkpoint.pt").is_file()


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_export_checks_parity_on_real_images_when_asked(artifact, tmp_path):
    out = tmp_path / "m.onnx"
    result = run_cli("export", artifact, "--keep", "2:8", "--parity-data", "fashion-mnist", "--resize", "--out", out,
                     "--json")
    assert result.returncode == 0, result.stderr
    parity = json.loads(result.stdout)["parity"]
    assert parity["inputs"] == "fashion-mnist test images" and parity["passed"]
    missing = run_cli("export", artifact, "--parity-data", "fashion-mnist", "--out", tmp_path / "n.onnx")
    assert missing.returncode == 2 and "--resize" in missing.stderr and not (tmp_path / "n.onnx").exists()

"""``vitdeploy bench``: real runs on ONNX Runtime CPU (no speed assertions) and its user errors."""

import argparse
import json

import pytest

from tests.conftest import tiny_model, tiny_spec
from tests.conftest import run_cli
from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.run import bench_sources, sparse_weights_for
from vitdeploy.cli._options import batch_list, whole_number_list
from vitdeploy.errors import VitDeployError
from vitdeploy.export.onnx import export_onnx
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.models.token_plan import apply_keep_plan

QUICK = TimingPlan(warmup=1, iters=4, rounds=2)


def test_interleaved_bench_of_model_and_pruned_variant(tmp_path):
    base = tiny_model()
    sources = {"base": ModelSource("base", tmp_path, model=base),
               "pruned": ModelSource("pruned", tmp_path, model=apply_keep_plan(base, "1:0.5"))}
    result = bench_sources(sources, "onnxruntime", BuildConfig(batch_sizes=(1, 2)), QUICK).to_dict()
    rows = {(r["name"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(n, b) for n in ("base", "pruned") for b in (1, 2)}
    assert rows[("base", 2)]["ratio_to_first"] == 1.0 and rows[("pruned", 2)]["ratio_to_first"] > 0
    assert all(r["iters"] == 4 for r in rows.values())
    assert rows[("pruned", 1)]["macs"] < rows[("base", 1)]["macs"]
    assert result["config"]["build"]["threads"] == 2 and result["environment"]["cpu"]


def test_cli_bench_writes_json_markdown_and_plot(tmp_path):
    save_artifact(tiny_model(), tmp_path / "m")
    export_onnx(tiny_model(), tmp_path / "m.onnx")
    result = run_cli("bench", tmp_path / "m", tmp_path / "m.onnx", "--batch", "1,2", "--iters", "4",
                     "--rounds", "2", "--warmup", "1", "--out", tmp_path / "res")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "res.json").read_text())
    assert {r["name"] for r in saved["rows"]} == {"m", "m#2"}
    assert (tmp_path / "res.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "### batch 2" in (tmp_path / "res.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["missing.onnx"], "no such ONNX file"),
    (["fmnist_vit", "--backend", "tensorrt"], "not available here"),
    (["fmnist_vit", "--batch", "8,zero"], "comma-separated whole numbers"),
    (["fmnist_vit", "--batch", "0"], "batch sizes must be in 1..65536"),
    (["fmnist_vit", "--backend", "mxnet"], "unknown backend"),
    (["fmnist_vit", "--iters", "0"], "--iters: '0' is out of range"),
    (["fmnist_vit", "--sparsity", "2:4"], "backend onnxruntime has no 2:4 sparse kernels"),
    (["fmnist_vit", "--backend", "torch", "--sparsity", "2:4"], "need --device cuda"),
])
def test_bench_user_errors_exit_2(args, message):
    result = run_cli("bench", *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_registered_name_exports_on_first_use(tmp_path):
    source = ModelSource("fmnist_vit", tmp_path)
    path = source.onnx_path()  # before anything else has loaded the model
    assert path.is_file() and source.input_shape() == (1, 28, 28)
    assert source.torch_model().spec.name == "fmnist_vit"


def test_whole_number_lists_are_checked_against_their_range():
    assert batch_list("1, 8,32") == (1, 8, 32)
    for bad in ("", "0,8", "8,x", "1,٨"):
        with pytest.raises(argparse.ArgumentTypeError):
            batch_list(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="client counts must be in 1..4"):
        whole_number_list(1, 4, "client counts")("2,5")


SHIPPED_TABLE = __import__("pathlib").Path(__file__).resolve().parents[2] / "latency_tables" / "amd-epyc-onnxruntime-fp32.json"


@pytest.mark.skipif(not SHIPPED_TABLE.is_file(), reason="no shipped CPU latency table")
def test_lut_predict_follows_the_token_plan():
    base = run_cli("lut", "predict", SHIPPED_TABLE, "deit_small_patch16_224", "--json")
    pruned = run_cli("lut", "predict", SHIPPED_TABLE, "deit_small_patch16_224", "--keep", "4:0.7,7:0.7,10:0.7",
                     "--json")
    assert base.returncode == 0 and pruned.returncode == 0, base.stderr + pruned.stderr
    base_ms, pruned_ms = json.loads(base.stdout)["total_ms"], json.loads(pruned.stdout)["total_ms"]
    assert 0 < pruned_ms < base_ms
    shown = json.loads(run_cli("lut", "show", SHIPPED_TABLE, "--json").stdout)
    assert shown["backend"] == "onnxruntime" and shown["batch"] == 8 and shown["build_command"]


def test_lut_on_a_bad_table_exits_2(tmp_path):
    (tmp_path / "t.json").write_text("{}")
    result = run_cli("lut", "show", tmp_path / "t.json")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sparsity, backend, device, precision, spec_sparsity, expected", [
    ("auto", "torch", "cuda", "bf16", "2:4", True),
    ("auto", "tensorrt", "cuda", "fp16", "2:4", True),
    ("auto", "torch", "cuda", "bf16", None, False),
    ("auto", "torch", "cuda", "fp32", "2:4", False),
    ("auto", "torch", "cpu", "fp16", "2:4", False),
    ("auto", "onnxruntime", "cuda", "fp16", "2:4", False),
    ("none", "torch", "cuda", "fp16", "2:4", False),
    ("2:4", "torch", "cpu", "fp32", None, True),
])
def test_sparse_weights_follow_the_spec_or_the_flag(tmp_path, sparsity, backend, device, precision, spec_sparsity,
                                                    expected):
    source = ModelSource("m", tmp_path, model=tiny_model(tiny_spec(sparsity=spec_sparsity)))
    config = BuildConfig(device=device, precision=precision)
    assert sparse_weights_for(source, sparsity, backend, config) is expected


def test_sparse_weights_for_a_bare_onnx_only_on_request(tmp_path):
    export_onnx(tiny_model(), tmp_path / "m.onnx")
    source, config = ModelSource(str(tmp_path / "m.onnx"), tmp_path), BuildConfig(device="cuda", precision="fp16")
    assert not sparse_weights_for(source, "auto", "tensorrt", config)
    assert sparse_weights_for(source, "2:4", "tensorrt", config)


@pytest.mark.parametrize("sparsity, backend, message", [
    ("2:4", "onnxruntime", "has no 2:4 sparse kernels"),
    ("4:8", "torch", "choose one of auto, none, 2:4"),
])
def test_bad_sparsity_requests_are_user_errors(tmp_path, sparsity, backend, message):
    source = ModelSource("m", tmp_path, model=tiny_model())
    with pytest.raises(VitDeployError, match=message):
        sparse_weights_for(source, sparsity, backend, BuildConfig())


def test_bench_records_each_models_sparse_kernels(tmp_path):
    """On CPU a 2:4 spec still benches (dense kernels): ``auto`` asks for 2:4 only where the build can run it."""
    sources = {"dense": ModelSource("dense", tmp_path, model=tiny_model()),
               "sparse": ModelSource("sparse", tmp_path, model=tiny_model(tiny_spec(sparsity="2:4")))}
    result = bench_sources(sources, "torch", BuildConfig(batch_sizes=(1,), threads=1), QUICK).to_dict()
    assert result["config"]["sparsity"] == "auto"
    assert result["config"]["sparse_weights"] == {"dense": False, "sparse": False}
    assert all(r["metadata"]["sparse_weights"] is False for r in result["rows"])
    with pytest.raises(VitDeployError, match="need --device cuda"):
        bench_sources(sources, "torch", BuildConfig(batch_sizes=(1,), threads=1), QUICK, sparsity="2:4")

"""Engine backends: ONNX Runtime and torch on CPU (and GPU where present), the registry, the engine cache."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model, tiny_spec
from vitdeploy.backends import BuildConfig, ModelSource, get_backend
from vitdeploy.backends._base import SPARSITY_UNKNOWN
from vitdeploy.backends._cache import CACHE_ENV, EngineCache, cache_key, default_cache_root, file_sha256
from vitdeploy.backends.onnxruntime import OnnxRuntimeBackend
from vitdeploy.backends.torch import TorchBackend, check_two_four
from vitdeploy.bench.harness import TimingPlan, random_batch, time_engine
from vitdeploy.bench.run import bench_sources
from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import uniform_blocks

@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """One ONNX export of the tiny model, shared by the ONNX Runtime tests."""
    source = ModelSource("tiny", tmp_path_factory.mktemp("export"), model=model)
    source.onnx_path()
    return source


@pytest.fixture
def batch():
    return random_batch(3, (3, 32, 32), seed=1)


def reference(model, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


# ------------------------------------------------------------------ ONNX Runtime


def test_onnxruntime_engine_matches_torch(exported, model, batch):
    engine = OnnxRuntimeBackend().build(exported, BuildConfig(threads=1))
    assert engine.device == "cpu"
    np.testing.assert_allclose(engine.infer(batch), reference(model, batch), atol=1e-4, rtol=0)


def test_onnxruntime_records_threads_and_providers(exported):
    engine = OnnxRuntimeBackend().build(exported, BuildConfig(threads=1))
    metadata = engine.metadata()
    assert metadata["threads"] == 1
    assert engine.session.get_session_options().intra_op_num_threads == 1
    assert engine.session.get_session_options().inter_op_num_threads == 1
    assert metadata["providers"] == ["CPUExecutionProvider"]
    assert metadata["backend"] == "onnxruntime" and metadata["device_name"]


def test_onnxruntime_engine_runs_under_the_harness(exported, batch):
    engine = OnnxRuntimeBackend().build(exported, BuildConfig(threads=1))
    measurement = time_engine(engine, "ort", batch, TimingPlan(warmup=1, iters=3))
    assert len(measurement.latencies_ms) == 3 and all(ms > 0 for ms in measurement.latencies_ms)
    assert measurement.metadata["backend"] == "onnxruntime"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_onnxruntime_reduced_precision_on_cpu_is_a_user_error(tmp_path, model, precision):
    source = ModelSource("tiny", tmp_path, model=model)
    with pytest.raises(VitDeployError, match="--precision fp32"):
        OnnxRuntimeBackend().build(source, BuildConfig(precision=precision))
    assert not list(tmp_path.iterdir()), "the config is rejected before anything is exported"


def test_onnxruntime_cuda_needs_onnxruntime_gpu(tmp_path, model):
    if OnnxRuntimeBackend().available("cuda"):
        pytest.skip("this ONNX Runtime has the CUDA execution provider")
    with pytest.raises(VitDeployError, match="onnxruntime-gpu"):
        OnnxRuntimeBackend().build(ModelSource("tiny", tmp_path, model=model), BuildConfig(device="cuda"))
    assert "onnxruntime-gpu" in OnnxRuntimeBackend().unavailable_reason("cuda")


# ------------------------------------------------------------------ torch


def test_torch_cpu_eager_matches_the_model_exactly(model, tmp_path, batch):
    engine = TorchBackend().build(ModelSource("tiny", tmp_path, model=model), BuildConfig(threads=1))
    assert engine.device == "cpu"
    np.testing.assert_array_equal(engine.infer(batch), reference(model, batch))
    assert engine.metadata()["threads"] == 1


def test_torch_reduced_precision_leaves_the_source_model_alone(model, tmp_path, batch):
    engine = TorchBackend().build(ModelSource("tiny", tmp_path, model=model), BuildConfig(precision="bf16"))
    assert next(model.parameters()).dtype == torch.float32
    want = reference(model, batch)
    assert np.abs(engine.infer(batch) - want).max() < 5e-2 * max(1.0, np.abs(want).max())
    assert engine.metadata()["precision"] == "bf16"


def test_torch_engine_runs_under_the_harness(model, tmp_path, batch):
    engine = TorchBackend().build(ModelSource("tiny", tmp_path, model=model), BuildConfig(threads=1))
    measurement = time_engine(engine, "torch", batch, TimingPlan(warmup=1, iters=3))
    assert len(measurement.latencies_ms) == 3
    assert measurement.metadata["backend"] == "torch" and measurement.metadata["device"] == "cpu"


@pytest.mark.parametrize("options, message", [
    (dict(sparse_weights=True, precision="fp16"), "--device cuda"),
    (dict(cuda_graphs=True), "--device cuda"),
    (dict(device="cuda", sparse_weights=True), "fp16 or bf16"),
    (dict(compile=True, cuda_graphs=True, device="cuda"), "CUDA graphs"),
])
def test_torch_rejects_options_it_cannot_run(model, tmp_path, options, message):
    with pytest.raises(VitDeployError, match=message):
        TorchBackend().build(ModelSource("tiny", tmp_path, model=model), BuildConfig(**options))


def test_torch_cuda_without_a_gpu_is_a_user_error(model, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert not TorchBackend().available("cuda") and TorchBackend().available("cpu")
    with pytest.raises(VitDeployError, match="no CUDA GPU"):
        TorchBackend().build(ModelSource("tiny", tmp_path, model=model), BuildConfig(device="cuda"))


def test_model_source_reports_the_spec_sparsity(model, exported, tmp_path):
    assert ModelSource("tiny", tmp_path, model=model).sparsity() is None
    assert ModelSource("sparse", tmp_path, model=tiny_model(tiny_spec(sparsity="2:4"))).sparsity() == "2:4"
    assert ModelSource(str(exported.onnx_path()), tmp_path).sparsity() == SPARSITY_UNKNOWN


def test_two_four_check_accepts_only_two_four_weights():
    weight = two_four(torch.randn(32, 64))
    check_two_four(weight, "ok")
    weight[0, :4] = 1.0
    with pytest.raises(VitDeployError, match="not 2:4 sparse.*vitdeploy prune sparse24 MODEL"):
        check_two_four(weight, "dense group")
    with pytest.raises(VitDeployError, match="divisible by 16"):
        check_two_four(two_four(torch.randn(24, 64)), "odd rows")


# ------------------------------------------------------------------ registry


def test_get_backend_tensorrt_here_is_a_user_error():
    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(VitDeployError, match="TensorRT") as caught:
        get_backend("tensorrt")
    assert caught.value.exit_code == 2


def test_get_backend_unknown_name():
    with pytest.raises(VitDeployError, match="unknown backend 'nope'"):
        get_backend("nope")


def test_get_backend_returns_cpu_backends():
    assert get_backend("onnxruntime").name == "onnxruntime"
    assert get_backend("torch").name == "torch"


# ------------------------------------------------------------------ engine cache

VERSIONS = {"tensorrt": "10.8.0.43"}


def test_cache_key_is_stable_and_sensitive_to_every_input(tmp_path):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    first.write_bytes(b"onnx-bytes-0")
    second.write_bytes(b"onnx-bytes-1")
    config = BuildConfig(precision="fp16", device="cuda")
    key = cache_key(file_sha256(first), config, "GPU", VERSIONS)
    assert key == cache_key(file_sha256(first), BuildConfig(precision="fp16", device="cuda"), "GPU", dict(VERSIONS))
    variants = [
        cache_key(file_sha256(second), config, "GPU", VERSIONS),
        cache_key(file_sha256(first), BuildConfig(precision="fp16", device="cuda", batch_sizes=(1, 16)), "GPU", VERSIONS),
        cache_key(file_sha256(first), BuildConfig(precision="fp32", device="cuda"), "GPU", VERSIONS),
        cache_key(file_sha256(first), config, "Other GPU", VERSIONS),
        cache_key(file_sha256(first), config, "GPU", {"tensorrt": "10.9.0.34"}),
        cache_key(file_sha256(first), config, "GPU", {**VERSIONS, "torch": "2.13"}),
    ]
    assert len({key, *variants}) == len(variants) + 1


def test_cache_round_trip_is_atomic(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = cache_key("0" * 64, BuildConfig(), "GPU", VERSIONS)
    assert cache.get(key) is None
    path = cache.put(key, b"\x00engine\xff", {"tensorrt": "10.8.0.43"})
    assert cache.get(key) == path and path.read_bytes() == b"\x00engine\xff"
    assert cache.read_metadata(key) == {"tensorrt": "10.8.0.43"}
    assert sorted(p.name for p in cache.root.iterdir()) == [f"{key}.engine", f"{key}.json"]


def test_cache_ignores_an_engine_without_metadata(tmp_path):
    cache = EngineCache(tmp_path)
    key = cache_key("0" * 64, BuildConfig(), "GPU", VERSIONS)
    cache.engine_path(key).write_bytes(b"half-finished")
    assert cache.get(key) is None


def test_cache_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert default_cache_root() == tmp_path / "elsewhere"
    assert EngineCache().root == tmp_path / "elsewhere"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_root() == Path("~/.cache/vitdeploy/engines").expanduser()


def test_cache_rejects_keys_that_are_not_digests(tmp_path):
    with pytest.raises(ValueError):
        EngineCache(tmp_path).get("../../etc/passwd")


def test_cache_metadata_is_json(tmp_path):
    cache = EngineCache(tmp_path)
    key = cache_key("1" * 64, BuildConfig(), "GPU", VERSIONS)
    cache.put(key, b"x", {"build_config": BuildConfig().to_dict()})
    assert json.loads(cache.metadata_path(key).read_text())["build_config"]["precision"] == "fp32"


# ------------------------------------------------------------------ GPU


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with the two smallest-magnitude entries of every group of 4 (along dim 1) zeroed."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 4, 4).clone()
    smallest = groups.abs().argsort(dim=-1)[..., :2]
    groups.scatter_(-1, smallest, 0.0)
    return groups.reshape(rows, cols)


def sparse_ready_model():
    """A model whose block Linear dims are multiples of 64 and whose block weights are 2:4 sparse."""
    model = tiny_model(tiny_spec(embed_dim=64, blocks=uniform_blocks(2, 64, 2), sparsity="2:4"))
    with torch.no_grad():
        for module in model.blocks.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(two_four(module.weight))
    return model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_fp16_matches_fp32(model, tmp_path, batch):
    source = ModelSource("tiny", tmp_path, model=model)
    full = TorchBackend().build(source, BuildConfig(device="cuda"))
    half = TorchBackend().build(source, BuildConfig(device="cuda", precision="fp16"))
    assert half.device == "cuda" and half.metadata()["device_name"] == torch.cuda.get_device_name()
    np.testing.assert_allclose(half.infer(batch), full.infer(batch), atol=1e-2, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_graph_replay_matches_eager(model, tmp_path):
    source = ModelSource("tiny", tmp_path, model=model)
    eager = TorchBackend().build(source, BuildConfig(device="cuda"))
    graphed = TorchBackend().build(source, BuildConfig(device="cuda", cuda_graphs=True))
    for seed, size in [(1, 3), (2, 3), (3, 5)]:
        x = random_batch(size, (3, 32, 32), seed=seed)
        np.testing.assert_allclose(graphed.infer(x), eager.infer(x), atol=1e-5, rtol=0)
    staged = graphed.stage(random_batch(3, (3, 32, 32), seed=4))
    graphed.run(staged)
    graphed.synchronize()
    assert sorted(graphed._graphs) == [(3, 3, 32, 32), (5, 3, 32, 32)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_two_four_sparse_runs_and_matches_dense(tmp_path):
    from torch.sparse import SparseSemiStructuredTensor

    model = sparse_ready_model()
    source = ModelSource("sparse", tmp_path, model=model)
    x = random_batch(4, (3, 32, 32), seed=5)
    dense = TorchBackend().build(source, BuildConfig(device="cuda", precision="fp16"))
    sparse = TorchBackend().build(source, BuildConfig(device="cuda", precision="fp16", sparse_weights=True))
    assert isinstance(sparse.model.blocks[0].mlp.fc1.weight, SparseSemiStructuredTensor)
    assert sparse.metadata()["sparse_weights"] is True
    np.testing.assert_allclose(sparse.infer(x), dense.infer(x), atol=1e-2, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_picks_two_four_kernels_from_the_spec_on_cuda(tmp_path):
    sources = {"dense": ModelSource("dense", tmp_path, model=tiny_model(tiny_spec(embed_dim=64,
                                                                                  blocks=uniform_blocks(2, 64, 2)))),
               "sparse": ModelSource("sparse", tmp_path, model=sparse_ready_model())}
    config = BuildConfig(device="cuda", precision="bf16", batch_sizes=(2,))
    result = bench_sources(sources, "torch", config, TimingPlan(warmup=1, iters=2, rounds=1)).to_dict()
    assert result["config"]["sparse_weights"] == {"dense": False, "sparse": True}
    assert {r["name"]: r["metadata"]["sparse_weights"] for r in result["rows"]} == {"dense": False, "sparse": True}


def test_the_torch_engine_leaves_the_callers_thread_count_alone(tiny):
    previous = torch.get_num_threads()
    other = 1 if previous != 1 else 2
    engine = get_backend("torch").build(ModelSource("tiny", ".", model=tiny), BuildConfig(threads=other))
    engine.infer(np.zeros((1, 3, 32, 32), np.float32))
    assert torch.get_num_threads() == previous and engine.metadata()["threads"] == other


def test_a_source_exports_for_the_target_a_backend_names(tmp_path, tiny):
    from vitdeploy.export.onnx import report_path

    source = ModelSource("tiny", tmp_path, model=tiny)
    targets = {}
    for name in ("onnxruntime", "tensorrt"):
        target = get_backend(name, require_available=False).export_target
        targets[name] = json.loads(report_path(source.onnx_path(target)).read_text())["config"]["target"]
    assert targets == {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}

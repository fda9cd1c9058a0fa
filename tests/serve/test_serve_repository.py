"""`vitdeploy triton-repo`: config.pbtxt through the ModelConfig protobuf, checked against the ONNX graph."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from vitdeploy.errors import VitDeployError
from vitdeploy.serve.repository import RepoConfig, check_config, write_repository


def read_config(path) -> "pb.ModelConfig":
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def test_repository_layout_config_and_model_agree(tiny_onnx, tmp_path):
    config = RepoConfig(max_batch=16, preferred_batch=(4, 8), max_queue_delay_us=300, instances=2)
    written = write_repository([str(tiny_onnx)], ["vit"], config, tmp_path / "repo")
    assert written == [{"name": "vit", "model": str(tiny_onnx), "platform": "onnxruntime_onnx",
                        "file": "vit/1/model.onnx", "input": [-1, 3, 32, 32], "output": [-1, 5]}]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "repo", "repo/vit", "repo/vit/1", "repo/vit/1/model.onnx", "repo/vit/config.pbtxt"]
    message = read_config(tmp_path / "repo/vit/config.pbtxt")
    assert (message.name, message.platform, message.max_batch_size) == ("vit", "onnxruntime_onnx", 16)
    assert list(message.dynamic_batching.preferred_batch_size) == [4, 8]
    assert message.dynamic_batching.max_queue_delay_microseconds == 300
    assert [(g.count, g.kind) for g in message.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]
    assert not message.optimization.HasField("execution_accelerators")

    graph = onnx.load(str(tmp_path / "repo/vit/1/model.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    for tensor, value in ((message.input[0], graph.graph.input[0]), (message.output[0], graph.graph.output[0])):
        assert tensor.name == value.name
        assert list(tensor.dims) == [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]


def test_repository_model_computes_what_the_export_does(tiny_onnx, tmp_path):
    write_repository([str(tiny_onnx)], None, RepoConfig(), tmp_path / "repo")
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    served = ort.InferenceSession(str(tmp_path / "repo/tiny/1/model.onnx")).run(["logits"], {"images": images})[0]
    exported = ort.InferenceSession(str(tiny_onnx)).run(["logits"], {"input": images})[0]
    assert served.shape == (3, 5) and np.isfinite(served).all()
    np.testing.assert_array_equal(served, exported)


def test_ort_tensorrt_accelerator_block(tiny_onnx, tmp_path):
    config = RepoConfig(device="cuda", ort_tensorrt="fp16")
    write_repository([str(tiny_onnx)], None, config, tmp_path / "repo")
    message = read_config(tmp_path / "repo/tiny/config.pbtxt")
    (accelerator,) = message.optimization.execution_accelerators.gpu_execution_accelerator
    assert (accelerator.name, dict(accelerator.parameters)) == ("tensorrt", {"precision_mode": "FP16"})
    assert message.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU


def test_config_check_rejects_a_config_that_does_not_match_the_graph(tiny_onnx, tmp_path):
    write_repository([str(tiny_onnx)], None, RepoConfig(), tmp_path / "repo")
    graph = onnx.load(str(tmp_path / "repo/tiny/1/model.onnx"))
    message = read_config(tmp_path / "repo/tiny/config.pbtxt")
    check_config(message, graph)
    message.input[0].dims[1] = 64
    with pytest.raises(RuntimeError, match="does not match"):
        check_config(message, graph)
    message = read_config(tmp_path / "repo/tiny/config.pbtxt")
    message.output[0].name = "probs"
    with pytest.raises(RuntimeError, match="does not match"):
        check_config(message, graph)


@pytest.mark.parametrize("config, message", [
    (RepoConfig(target="tensorrt"), "pass device cuda"),
    (RepoConfig(preferred_batch=(64,)), "preferred_batch sizes must lie in 1..max_batch"),
    (RepoConfig(ort_tensorrt="fp16"), "ort_tensorrt applies to target onnxruntime"),
    (RepoConfig(max_batch=0), "^max_batch: Input should be greater than or equal to 1"),
])
def test_bad_settings_write_nothing(tiny_onnx, tmp_path, config, message):
    with pytest.raises(VitDeployError, match=message):
        write_repository([str(tiny_onnx)], None, config, tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_target_without_tensorrt_writes_nothing(tiny_onnx, tmp_path):
    pytest.importorskip("torch")
    from vitdeploy.backends import get_backend

    if get_backend("tensorrt", require_available=False).available():
        pytest.skip("TensorRT can build here")
    with pytest.raises(VitDeployError, match="tensorrt"):
        write_repository([str(tiny_onnx)], None, RepoConfig(target="tensorrt", device="cuda"), tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


def test_other_models_versions_and_files_in_the_repository_are_kept(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    name = write_repository([str(tiny_onnx)], None, RepoConfig(), repo)[0]["name"]
    (repo / "notes.txt").write_text("mine")
    (repo / "other_model" / "1").mkdir(parents=True)
    (repo / "other_model" / "1" / "model.onnx").write_text("theirs")
    (repo / name / "2").mkdir()
    (repo / name / "2" / "model.onnx").write_text("version 2")
    (repo / name / "labels.txt").write_text("a\nb")
    (repo / name / "1" / "model.onnx").write_text("stale")
    write_repository([str(tiny_onnx)], None, RepoConfig(max_batch=4), repo)
    assert (repo / "notes.txt").read_text() == "mine"
    assert (repo / "other_model" / "1" / "model.onnx").read_text() == "theirs"
    assert (repo / name / "2" / "model.onnx").read_text() == "version 2"
    assert (repo / name / "labels.txt").read_text() == "a\nb"
    assert onnx.load(str(repo / name / "1" / "model.onnx")).graph.input[0].name == "images"  # replaced
    assert read_config(repo / name / "config.pbtxt").max_batch_size == 4


def test_a_version_directory_with_files_it_did_not_write_is_refused_before_any_work(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    name = write_repository([str(tiny_onnx)], None, RepoConfig(), repo)[0]["name"]
    (repo / name / "1" / "calibration.cache").write_text("mine")
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    with pytest.raises(VitDeployError, match="already holds other files"):
        write_repository([str(tiny_onnx)], None, RepoConfig(max_batch=4), repo)
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before

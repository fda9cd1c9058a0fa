"""A real Triton server on loopback ports, shared by the serving tests (it takes ~10 s to start)."""

import socket
from pathlib import Path

import pytest

from tests.conftest import tiny_model

pytest.importorskip("pytriton", reason="nvidia-pytriton is a dependency of vitdeploy; install it")

MAX_BATCH = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """The 32×32, 5-class test ViT exported to ONNX (and checked) by vitdeploy."""
    from vitdeploy.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(tiny_model(), path)
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """Triton serving fmnist_vit and the tiny ViT side by side on the torch backend (no export to wait for);
    yields (config, models by name). The ONNX Runtime path is served in test_serve_cli."""
    from vitdeploy.models.checkpoint import save_artifact
    from vitdeploy.serve.triton import ServeConfig, build_models, running_server

    tiny_dir = save_artifact(tiny_model(), tmp_path_factory.mktemp("models") / "tiny")
    config = ServeConfig(backend="torch", max_batch=MAX_BATCH, max_queue_delay_us=2000, threads=1,
                         http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                         log_file=tmp_path_factory.mktemp("log") / "triton.log")
    models = build_models(["fmnist_vit", str(tiny_dir)], None, config, tmp_path_factory.mktemp("work"))
    with running_server(models, config):
        yield config, {model.name: model for model in models}

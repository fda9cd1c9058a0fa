"""INT8 latency tables: every part, and every whole model measured for the table, timed as the Q/DQ
graph `vitdeploy quantize` writes by default; a table is used only for budgets of its own kind."""

from dataclasses import replace

import numpy as np
import onnx
import pytest
from torch import nn

from vitdeploy.backends import BuildConfig, get_backend
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.errors import VitDeployError
from vitdeploy.export.config import ExportConfig
from vitdeploy.export.onnx import export_onnx
from vitdeploy.lut import build as lut_build
from vitdeploy.lut import build_table, default_grid, load_table, refresh_table, require_table_for, save_table
from vitdeploy.lut import measure
from vitdeploy.models.vit import Block, ViT
from vitdeploy.quantize import ptq
from tests.conftest import tiny_model, tiny_spec
from tests.lut.synthetic import metadata, synthetic_table, table_for_this_machine

pytest.importorskip("onnxruntime")
PLAN = TimingPlan(warmup=1, iters=3, rounds=1)


def matmul_inputs(path) -> list[tuple[str, ...]]:
    """For each MatMul of the graph, the op types that produce its two inputs."""
    graph = onnx.load(str(path)).graph
    producer = {output: node.op_type for node in graph.node for output in node.output}
    return [tuple(producer.get(name, "initializer") for name in node.input)
            for node in graph.node if node.op_type == "MatMul"]


def test_a_block_part_gets_qdq_on_its_four_weight_matmuls_and_none_on_attention(tmp_path):
    spec = tiny_spec()
    example = (2, spec.num_patches + 1, spec.embed_dim)
    part = lut_build._BlockPart(Block(spec, spec.blocks[0], spec.num_patches))
    lut_build.export_part(part, tmp_path / "block.onnx", example)
    assert ptq.quantize_for_timing(tmp_path / "block.onnx", tmp_path / "int8.onnx", example, "onnxruntime")
    inputs = matmul_inputs(tmp_path / "int8.onnx")
    quantized = [pair for pair in inputs if pair == ("DequantizeLinear", "DequantizeLinear")]
    assert len(quantized) == 4 and len(inputs) == 6  # qkv, proj, fc1, fc2; Q·Kᵀ and P·V stay float


def test_a_model_without_blocks_is_left_float(tmp_path):
    model = ViT(tiny_spec()).eval()
    model.blocks = nn.ModuleList()
    path = tmp_path / "stem.onnx"
    export_onnx(model, path, ExportConfig())
    assert not ptq.quantize_for_timing(path, tmp_path / "int8.onnx", (2, 3, 32, 32), "onnxruntime")
    assert not (tmp_path / "int8.onnx").exists()


@pytest.fixture(scope="module")
def int8_parts():
    """The quick grid built INT8 with ONNX Runtime, and for every engine built for it, whether its
    graph runs the weight MatMuls in INT8 (by the graph's file name)."""
    quantized: dict[str, bool] = {}
    backend = type(get_backend("onnxruntime"))
    build = backend.build

    def recording(self, source, config):
        path = source.onnx_path(self.export_target)
        quantized[path.name] = ("DequantizeLinear", "DequantizeLinear") in matmul_inputs(path)
        return build(self, source, config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backend, "build", recording)
        table = build_table("onnxruntime", BuildConfig(threads=1), default_grid("quick"), PLAN, device_batch=2,
                            progress=False, int8=True)
    return table, quantized


def test_an_int8_table_times_every_block_part_as_a_qdq_graph(int8_parts):
    table, quantized = int8_parts
    meta = table.metadata
    assert meta.precision == "int8" and meta.build_config["precision"] == "fp32"
    assert all(np.all(table.part(name).ms > 0) for name in ("attention", "mlp", "fixed"))
    assert len(quantized) > 5 and any(name.startswith("fixed") for name in quantized)
    assert sorted(name for name, int8 in quantized.items() if not int8) == ["fixed-embed32.onnxruntime.onnx"]


def test_refresh_keeps_an_int8_table_int8(int8_parts, tmp_path):
    path = tmp_path / "int8.json"
    save_table(int8_parts[0], path)
    calls = []
    real = ptq.quantize_for_timing

    def counting(*args):
        calls.append(args)
        return real(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ptq, "quantize_for_timing", counting)
        refreshed = refresh_table(path, progress=False)
    assert refreshed.metadata.precision == "int8" and load_table(path).metadata.precision == "int8"
    assert len(calls) == len(int8_parts[1])


def test_whole_models_measured_for_an_int8_table_are_quantized(monkeypatch):
    shapes = []
    real = ptq.quantize_for_timing

    def recording(float_path, out, example_shape, target):
        quantized = real(float_path, out, example_shape, target)
        shapes.append((example_shape, quantized))
        return quantized

    monkeypatch.setattr(ptq, "quantize_for_timing", recording)
    meta = metadata(precision="int8", batch=2, build_config=BuildConfig(threads=1).to_dict())
    measured = measure.measure_models({"tiny": tiny_model()}, meta, PLAN)
    assert measured["tiny"] > 0 and shapes == [((2, 3, 32, 32), True)]


def test_the_torch_backend_cannot_build_an_int8_table():
    with pytest.raises(VitDeployError, match="torch backend does not run INT8"):
        build_table("torch", BuildConfig(threads=1), default_grid("quick"), PLAN, device_batch=2, progress=False,
                    int8=True)


@pytest.mark.parametrize("table_precision, int8, message", [
    ("int8", False, "measured on INT8 graphs, but this latency budget is for the float model"),
    ("fp32", True, "measured on fp32 graphs, but this latency budget is for the INT8 model"),
])
def test_a_table_serves_only_budgets_of_its_own_precision(monkeypatch, table_precision, int8, message):
    monkeypatch.setattr("vitdeploy.lut.table.device_name", lambda device: "Test CPU @ 1.00GHz")
    table = replace(synthetic_table(), metadata=metadata(precision=table_precision))
    with pytest.raises(VitDeployError, match=message) as refused:
        require_table_for(table, "onnxruntime", 8, "cpu", "fmnist_vit", int8)
    assert ("--precision int8" in str(refused.value)) == int8
    require_table_for(table, "onnxruntime", 8, "cpu", "fmnist_vit", table_precision == "int8")


def test_nvit_prunes_to_an_int8_budget_and_measures_the_quantized_models(tmp_path, monkeypatch):
    from vitdeploy.lut import predict
    from vitdeploy.prune.methods.nvit.config import NViTConfig
    from vitdeploy.prune.registry import METHODS, PruneContext

    model = tiny_model(tiny_spec(num_classes=10))
    table = table_for_this_machine(model.spec, batch=2)
    table = replace(table, metadata=replace(table.metadata, precision="int8"))
    save_table(table, tmp_path / "int8.json")
    quantized = []
    real = ptq.quantize_for_timing
    monkeypatch.setattr(ptq, "quantize_for_timing", lambda *args: quantized.append(real(*args)) or quantized[-1])
    target = 0.7 * predict(table, model.spec)["total_ms"]
    config = NViTConfig(target_flops=None, target_latency_ms=target, lut=str(tmp_path / "int8.json"),
                        latency_precision="int8", prune_step=0.2, calib_batches=1, batch_size=16, finetune_steps=1,
                        final_finetune_steps=1)
    _, report = METHODS.get("nvit").prune(model, config, PruneContext(data="fashion-mnist", resize=True,
                                                                      progress=False))
    assert quantized == [True, True, True]  # the drift check's unpruned model, then it and the result again
    assert report["latency"]["measured_ms"] > 0 and report["latency"]["unpruned_measured_ms"] > 0

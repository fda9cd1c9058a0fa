"""INT8 post-training quantization: which nodes run in INT8, the Q/DQ each target gets, the accuracy
check that refuses a model, and what is written."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from vitdeploy.errors import VitDeployError
from vitdeploy.export.check import audit
from vitdeploy.export.onnx import export_onnx
from vitdeploy.models.spec import TokenStep
from vitdeploy.models.token_plan import with_spec
from vitdeploy.models.zoo import load_model
from vitdeploy.prune.methods.spvit import algorithm as spvit
from vitdeploy.quantize import parts, ptq
from vitdeploy.quantize.config import PARTS, QuantizeConfig
from vitdeploy.schema import flag_name, validated

SMALL = dict(calib_images=64, calib_batch=32, eval_limit=300)


def quantized(tmp_path_factory, **settings):
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    report = ptq.quantize_model(load_model("fmnist_vit"), out, QuantizeConfig(**SMALL, **settings),
                                "fashion-mnist", "fashion-mnist")
    return out, report


@pytest.fixture(scope="module")
def for_onnxruntime(tmp_path_factory):
    return quantized(tmp_path_factory)


@pytest.fixture(scope="module")
def for_tensorrt(tmp_path_factory):
    return quantized(tmp_path_factory, target="tensorrt", parts=("linear", "attention"))


def exported(model, tmp_path) -> onnx.ModelProto:
    export_onnx(model, tmp_path / "float.onnx")
    return onnx.load(str(tmp_path / "float.onnx"))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_the_parts_are_the_weight_matmuls_attention_patch_embedding_and_head(tiny, tmp_path):
    graph = exported(tiny, tmp_path)
    weights = initializers(graph)
    nodes = {node.name: node for node in graph.graph.node}
    found = parts.nodes_by_part(graph, PARTS)
    depth = len(tiny.spec.blocks)
    assert {part: len(names) for part, names in found.items()} == {
        "linear": 4 * depth, "attention": 2 * depth, "patch-embed": 1, "head": 1}
    assert all(weights.keys() & set(nodes[name].input) for name in found["linear"] + found["head"])
    assert not any(weights.keys() & set(nodes[name].input) for name in found["attention"])


def class_attention_plan(model):
    return with_spec(model, model.spec.with_token_plan({2: TokenStep(keep=8, selector="cls_attn")}))


def spvit_selectors(model):
    plan = {2: TokenStep(keep=8, selector="spvit", package=True, package_mode="add")}
    return spvit.student_from(model, model.spec.with_token_plan(plan), 0).eval()


@pytest.mark.parametrize("planned", [class_attention_plan, spvit_selectors], ids=lambda f: f.__name__)
def test_token_selection_stays_in_float(tiny, tmp_path, planned):
    """A token plan adds score and selection nodes (SPViT: a selector MLP with weights); none joins a part."""
    plain = parts.nodes_by_part(exported(tiny, tmp_path), PARTS)
    planned = parts.nodes_by_part(exported(planned(tiny), tmp_path), PARTS)
    assert {p: len(n) for p, n in planned.items()} == {p: len(n) for p, n in plain.items()}


def test_onnxruntime_graph_int8_weights_per_channel_unsigned_activations(for_onnxruntime):
    out, report = for_onnxruntime
    graph = onnx.load(str(out))
    values = initializers(graph)
    weight_dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear" and values.get(n.input[0]) is not None
                 and values[n.input[0]].ndim == 2]
    assert len(weight_dq) == report.quantized["linear"] == 4 * 6
    for node in weight_dq:
        weight, scale = values[node.input[0]], values[node.input[1]]
        assert weight.dtype == np.int8 and scale.ndim == 1 and scale.size in weight.shape  # one scale per channel
        assert not values[node.input[2]].any()  # symmetric weights
    activation_q = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_q and all(values[n.input[2]].dtype == np.uint8 for n in activation_q)
    assert report.audit.passed and report.ops.get("QuantizeLinear") == len(activation_q)


def test_the_accuracy_check_compares_with_the_float_graph(for_onnxruntime):
    out, report = for_onnxruntime
    accuracy = report.accuracy
    assert accuracy.images == 300 and 0.8 < accuracy.float_top1 <= 1
    assert accuracy.drop_points <= 1 and accuracy.agreement >= 0.9
    written = json.loads(ptq.report_path(out).read_text())
    assert written["accuracy"]["int8_top1"] == accuracy.int8_top1 and written["quantized"]["linear"] == 24


def test_tensorrt_graph_is_symmetric_signed_and_passes_its_audit(for_tensorrt, for_onnxruntime):
    out, report = for_tensorrt
    graph = onnx.load(str(out))
    values = initializers(graph)
    zero_points = [values[n.input[2]] for n in graph.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert report.quantized == {"linear": 24, "attention": 12} and report.audit.passed
    ort_style = audit(onnx.load(str(for_onnxruntime[0])), "tensorrt")
    assert not ort_style.passed and "TensorRT runs only symmetric INT8" in ort_style.violations[0]


def test_a_drop_beyond_max_drop_writes_nothing(tmp_path, monkeypatch):
    worse = ptq.Accuracy(images=100, float_top1=0.9, int8_top1=0.85, agreement=0.9)
    monkeypatch.setattr(ptq, "compare_accuracy", lambda *args, **kwargs: worse)
    with pytest.raises(VitDeployError, match=r"INT8 loses 5.00 top-1 points .* more than --max-drop 1; nothing written"):
        ptq.quantize_model(load_model("fmnist_vit"), tmp_path / "q.onnx", QuantizeConfig(**SMALL),
                           "fashion-mnist", "fashion-mnist")
    assert list(tmp_path.iterdir()) == []


def test_calibration_data_is_refused_when_too_small_or_not_finite():
    images = [(torch.zeros(1, 28, 28), 0)] * 40
    assert [len(b) for b in ptq.calibration_batches(images, QuantizeConfig(**SMALL))] == [32, 8]
    with pytest.raises(VitDeployError, match="40 images, fewer than one calibration batch of 64"):
        ptq.calibration_batches(images, QuantizeConfig(calib_images=64, calib_batch=64))
    poisoned = images[:-1] + [(torch.full((1, 28, 28), float("nan")), 0)]
    with pytest.raises(VitDeployError, match="NaN or infinite"):
        ptq.calibration_batches(poisoned, QuantizeConfig(**SMALL))


def test_a_graph_without_the_exporters_scopes_has_nothing_to_quantize():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "x"], ["y"], name="mm")], "g", [x], [y])
    with pytest.raises(VitDeployError, match="nothing to quantize: the model has no linear nodes"):
        parts.nodes_by_part(onnx.helper.make_model(graph), ("linear",))


@pytest.mark.parametrize("settings, message", [
    ({"max_drop": -1.0}, "--max-drop: Input should be greater than or equal to 0"),
    ({"percentile": 100.0}, "--percentile: Input should be less than 100"),
    ({"calib_images": 8, "calib_batch": 16}, "8 calibration images are fewer than one batch of 16"),
    ({"parts": ("linear", "softmax")}, "parts to quantize: softmax; choose from linear, attention, patch-embed, head"),
    ({"calibration": "kl"}, "unknown calibration 'kl'"),
])
def test_settings_out_of_range_are_one_line_naming_the_flag(settings, message):
    with pytest.raises(VitDeployError) as error:
        validated(QuantizeConfig(**settings), flag_name)
    assert str(error.value).startswith(message)

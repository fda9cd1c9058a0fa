import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vitdeploy.errors import VitDeployError
from vitdeploy.export import check
from vitdeploy.export.onnx import ExportConfig, export_onnx, report_path
from vitdeploy.models.spec import TokenStep
from vitdeploy.models.token_plan import with_spec

PLAN = {
    0: TokenStep(keep=12, selector="cls_attn"),
    1: TokenStep(keep=8, selector="cls_attn", package=True),
    2: TokenStep(keep=5, selector="fixed", positions=[7, 0, 3, 2, 5]),
}


@pytest.fixture(scope="module")
def pruned():
    from tests.conftest import tiny_model

    model = tiny_model()
    return with_spec(model, model.spec.with_token_plan(PLAN))


@pytest.mark.parametrize("selection", ["topk", "rank"])
def test_export_passes_every_check_and_writes_its_report(tmp_path, pruned, selection):
    out = tmp_path / "m.onnx"
    report = export_onnx(pruned, out, ExportConfig(selection=selection, target="tensorrt"))
    assert report.audit.passed and report.parity.passed
    assert report.parity.max_abs_diff <= 1e-4 and report.parity.top1_agreement == 1.0
    saved = json.loads(report_path(out).read_text())
    assert saved["config"]["selection"] == selection and saved["audit"]["passed"]
    graph = onnx.load(str(out)).graph
    topk = [n for n in graph.node if n.op_type == "TopK"]
    assert len(topk) == (2 if selection == "topk" else 0)
    assert [t["k"] for t in saved["audit"]["topk"]] == ([12, 8] if selection == "topk" else [])
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim[1:]] == [5]


def test_export_restores_the_models_own_selection(tmp_path, pruned):
    pruned.set_selection("topk")
    export_onnx(pruned, tmp_path / "m.onnx", ExportConfig(selection="rank"))
    assert pruned.selection == "topk"


def test_failed_check_leaves_the_old_file_untouched(tmp_path, pruned):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(VitDeployError, match="parity check failed"):
        export_onnx(pruned, out, ExportConfig(parity_atol=-1.0))
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_failed_parity_of_scored_tokens_on_noise_points_to_real_images(tmp_path, pruned):
    with pytest.raises(VitDeployError, match="--parity-data"):
        export_onnx(pruned, tmp_path / "m.onnx", ExportConfig(parity_atol=-1.0))
    fixed = with_spec(pruned, pruned.spec.with_token_plan({2: PLAN[2]}))
    with pytest.raises(VitDeployError, match=r"> -1e\+00$"):  # constant positions cannot flip: no hint
        export_onnx(fixed, tmp_path / "f.onnx", ExportConfig(parity_atol=-1.0))


def test_parity_runs_on_the_given_images(tmp_path, pruned):
    out = tmp_path / "m.onnx"
    export_onnx(pruned, out)
    images = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    seen = []
    report = check.parity(out, lambda x: seen.append(x.copy()) or np.zeros((len(x), 5), np.float32), (3, 32, 32),
                          images=images, images_name="my images")
    assert [x.tolist() for x in seen] == [images[:1].tolist(), images[:3].tolist()]
    assert report.inputs == "my images"


def test_out_naming_a_directory_is_a_user_error(tmp_path, pruned):
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(VitDeployError, match="is a directory"):
        export_onnx(pruned, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("config, message", [
    (ExportConfig(opset=17), r"choose 18\.\.24"),
    (ExportConfig(opset=25), r"choose 18\.\.24"),
    (ExportConfig(target="tensorrt", opset=25), "not supported for tensorrt"),
    (ExportConfig(example_batch=1), "example_batch: Input should be greater than or equal to 2"),
    (ExportConfig(parity_batches=()), "parity_batches: Tuple should have at least 1 item"),
    (ExportConfig(target="coreml"), "unknown target"),
    (ExportConfig(selection="sort"), "unknown selection"),
])
def test_bad_export_configs(config, message):
    with pytest.raises(VitDeployError, match=message):
        config.validate()


def topk_graph(k: int | None, axis_length: int = 10, op: str = "TopK", domain: str = "") -> onnx.ModelProto:
    """x (batch, axis_length) → TopK with k either an initializer or a graph input."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", axis_length])]
    initializers = []
    if k is None:
        inputs.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    else:
        initializers.append(helper.make_tensor("k", TensorProto.INT64, [1], [k]))
    node = helper.make_node(op, ["x", "k"], ["values", "indices"], axis=1, domain=domain)
    outputs = [helper.make_tensor_value_info("values", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("indices", TensorProto.INT64, None)]
    graph = helper.make_graph([node], "g", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_audit_accepts_topk_with_static_k_below_axis_length():
    report = check.audit(topk_graph(3), "tensorrt")
    assert report.passed and report.topk[0].k == 3 and report.topk[0].axis_length == 10


def test_audit_rejects_a_full_length_topk_as_a_sort():
    report = check.audit(topk_graph(10), "onnxruntime")
    assert not report.passed and "full sort" in report.violations[0]


def test_audit_rejects_a_dynamic_k():
    report = check.audit(topk_graph(None), "onnxruntime")
    assert "not a constant" in report.violations[0]


def test_audit_rejects_ops_outside_the_allowlist_and_custom_domains():
    unique = helper.make_model(helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 18)])
    assert "Unique is not supported by tensorrt" in check.audit(unique, "tensorrt").violations[0]
    assert check.audit(unique, "onnxruntime").passed
    custom = check.audit(topk_graph(3, op="FastTopK", domain="com.example"), "onnxruntime")
    assert "custom-domain" in custom.violations[0]


def test_parity_detects_a_wrong_reference(tmp_path, pruned):
    out = tmp_path / "m.onnx"
    export_onnx(pruned, out)
    wrong = check.parity(out, lambda x: np.zeros((x.shape[0], 5), np.float32), (3, 32, 32))
    assert not wrong.passed

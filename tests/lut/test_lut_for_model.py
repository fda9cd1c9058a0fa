"""Tables for one model: derived grids, fused part graphs, the last block on one token, calibration,
the checks the optimiser and pruner make, and `lut build --for` end to end."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from vitdeploy.backends import BuildConfig, get_backend
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.cli import main
from vitdeploy.errors import VitDeployError
from vitdeploy.export.check import op_counts
from vitdeploy.lut import (
    Calibration, build_table, calibrate_table, export_part, fit_calibration, grid_for, load_table, predict,
    random_pruned_specs, require_coverage, require_table_for, save_table, table_path,
)
from vitdeploy.lut import build as lut_build
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.models.spec import BlockSpec, uniform_blocks
from vitdeploy.models.vit import Attention, Mlp
from vitdeploy.prune.methods.nvit.structural import smallest_spec
from tests.conftest import run_cli, tiny_model, tiny_spec
from tests.lut.synthetic import GRID, metadata, synthetic_table

REPO = Path(__file__).resolve().parents[2]
SHIPPED_TABLE = REPO / "latency_tables" / "amd-epyc-onnxruntime-fp32.json"
FAST_PLAN = TimingPlan(warmup=1, iters=2, rounds=1)


# --- grid_for -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [tiny_spec(), tiny_spec(embed_dim=48, blocks=uniform_blocks(3, 48, 3))],
                         ids=["2-heads", "3-heads"])
def test_grid_for_spans_the_model_down_to_what_pruning_reaches(spec):
    grid = grid_for(spec, round_to=8).validate()
    heads = spec.blocks[0].heads
    assert grid.name == f"for-{spec.name}" and grid.stem.img_size == spec.img_size
    assert grid.tokens[0] == 3 and grid.tokens[-1] == spec.num_patches + 1 and len(grid.tokens) == 5
    assert grid.embed[0] == 8 and grid.embed[-1] == spec.embed_dim
    assert grid.mlp[0] == 8 and grid.mlp[-1] == spec.blocks[0].mlp_dim
    assert grid.qk_width[-1] == grid.v_width[-1] == spec.embed_dim  # heads × head dim
    assert grid.qk_width[0] <= 8 and grid.qk_width[0] % heads == 0  # one head of round_to channels
    assert grid.heads == tuple(range(1, heads + 1)) and grid.reference_heads == heads
    assert all(grid.probe_width % h == 0 for h in grid.heads)
    # Neither the model nor the smallest model pruning reaches falls outside the grid.
    table = synthetic_table(grid)
    for model in (spec, smallest_spec(spec, 8)):
        assert predict(table, model)["extrapolated"] == []


def test_grid_for_follows_round_to_and_refuses_bad_input():
    assert grid_for(tiny_spec(), round_to=16).embed[0] == 16
    with pytest.raises(VitDeployError, match="round_to"):
        grid_for(tiny_spec(), round_to=0)
    with pytest.raises(VitDeployError, match="at least 3"):
        grid_for(tiny_spec(img_size=8, patch_size=8))


# --- fused part graphs ----------------------------------------------------------------------------

class AttentionOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention(32, BlockSpec(heads=2, qk_dim=16, v_dim=16, mlp_dim=64), qkv_bias=True)

    def forward(self, x):
        return self.attn(x)[0]


def test_parts_are_exported_at_the_whole_model_opset_and_fused(tmp_path):
    path = tmp_path / "mlp.onnx"
    export_part(Mlp(32, 64).eval(), path, (2, 9, 32), dynamic_tokens=True)
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [20]
    assert "Gelu" in op_counts(model.graph.node) and "Erf" not in op_counts(model.graph.node)
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_param  # the token axis stays dynamic
    report = export_part(AttentionOnly().eval(), tmp_path / "attention.onnx", (2, 9, 32))
    assert report.passes["key_transpose"] == 1  # fuse.fuse ran on the part


def test_the_fuse_target_follows_the_backend():
    assert get_backend("tensorrt", require_available=False).export_target == "tensorrt"
    assert {get_backend(name, require_available=False).export_target for name in ("onnxruntime", "torch")} == {
        "onnxruntime"}


# --- the last block's MLP on one token ------------------------------------------------------------

def test_the_last_blocks_mlp_runs_on_the_class_token_alone():
    def mlp(tokens, embed, mlp):
        return 0.5 + 1e-5 * tokens**1.5 * embed * mlp  # not linear in N: shows which interval extrapolates

    table = synthetic_table(mlp=mlp)
    spec = tiny_spec()  # 17 tokens, D 32, MLP 128: on GRID's embed and mlp axes
    result = predict(table, spec)
    at = {n: mlp(n, 32, 128) for n in (5, 10, 17)}
    # Below the grid's first token count (5): linear from the edge interval [5, 10].
    one_token = at[5] + (1 - 5) / (10 - 5) * (at[10] - at[5])
    last, first = result["blocks"][-1], result["blocks"][0]
    assert last["mlp_tokens"] == 1 and last["tokens"] == 17
    assert last["mlp_ms"] == pytest.approx(one_token, rel=1e-12)
    assert last["attention_ms"] == pytest.approx(first["attention_ms"], rel=1e-12)  # all 17 tokens
    assert first["mlp_tokens"] == 17 and first["mlp_ms"] == pytest.approx(table.mlp.interpolate(
        {"tokens": 17, "embed": 32, "mlp": 128})[0], rel=1e-12)
    assert result["extrapolated"] == []
    assert result["total_ms"] == pytest.approx(result["fixed_ms"] + sum(b["ms"] for b in result["blocks"]))


def test_a_distilled_models_last_block_keeps_all_its_tokens():
    result = predict(synthetic_table(), tiny_spec(distilled=True), include_fixed=False)
    last = result["blocks"][-1]
    assert last["mlp_tokens"] == last["tokens"] == 18
    assert last["mlp_ms"] == pytest.approx(0.25 + 2e-4 * 18 * 32 * 128)


def test_other_mlp_axes_outside_the_grid_are_still_flagged():
    spec = tiny_spec(blocks=[*uniform_blocks(3, 32, 2), BlockSpec(heads=2, qk_dim=16, v_dim=16, mlp_dim=512)])
    assert predict(synthetic_table(), spec)["extrapolated"] == ["block 4: mlp.mlp=512 outside [32, 256]"]


# --- calibration ----------------------------------------------------------------------------------

def test_the_calibration_fit_recovers_a_known_line():
    predicted = np.array([1.0, 2.0, 3.0, 5.0, 8.0])
    calibration = fit_calibration(predicted, 1.3 * predicted + 0.4)
    assert calibration.scale == pytest.approx(1.3) and calibration.offset_ms == pytest.approx(0.4, abs=1e-9)
    assert calibration.models == 5
    measured = 1.3 * predicted + 0.4
    assert calibration.mape_before_pct == pytest.approx(100 * np.mean((measured - predicted) / measured))
    assert calibration.mape_after_pct == pytest.approx(0, abs=1e-9)
    assert calibration.mape_loo_pct == pytest.approx(0, abs=1e-9)


def test_leave_one_out_sees_noise_the_in_sample_fit_hides():
    predicted = np.array([1.0, 2.0, 3.0, 5.0, 8.0])
    calibration = fit_calibration(predicted, 2 * predicted + np.array([0.2, -0.2, 0.2, -0.2, 0.2]))
    assert 0 < calibration.mape_after_pct < calibration.mape_loo_pct
    assert fit_calibration([1.0, 2.0], [3.0, 5.0]).mape_loo_pct is None  # two points: nothing left out to test


def test_a_fit_with_a_falling_line_falls_back_to_a_positive_scale():
    calibration = fit_calibration([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert calibration.scale == pytest.approx((3 + 4 + 3) / (1 + 4 + 9)) and calibration.offset_ms == 0.0
    with pytest.raises(VitDeployError, match="at least 2 models"):
        fit_calibration([1.0], [1.0])


def test_calibrated_predictions_and_raw_sums(tmp_path):
    table = replace(synthetic_table(), calibration=Calibration(scale=1.5, offset_ms=2.0, models=9))
    spec = tiny_spec()
    plain, calibrated = predict(synthetic_table(), spec), predict(table, spec)
    assert calibrated["raw_ms"] == pytest.approx(plain["total_ms"]) == pytest.approx(plain["raw_ms"])
    assert calibrated["total_ms"] == pytest.approx(1.5 * plain["total_ms"] + 2.0)
    blocks_only = predict(table, spec, include_fixed=False)
    assert blocks_only["total_ms"] == pytest.approx(1.5 * blocks_only["raw_ms"])
    path = tmp_path / "calibrated.json"
    save_table(table, path)
    assert load_table(path).calibration == table.calibration
    assert predict(load_table(path), spec)["total_ms"] == pytest.approx(calibrated["total_ms"], rel=1e-3)


def test_tables_without_a_calibration_load_and_predict_the_plain_sum():
    table = load_table(SHIPPED_TABLE)
    assert table.calibration is None and "calibration" not in table.to_dict()
    result = predict(table, tiny_spec(), include_fixed=False)
    assert result["total_ms"] == result["raw_ms"]


@pytest.mark.parametrize("calibration, message", [
    ({"scale": -1.0, "offset_ms": 0.0, "models": 3}, r"calibration.scale must be in \(0, 1000\]"),
    ({"scale": 1e300, "offset_ms": 0.0, "models": 3}, r"calibration.scale must be in \(0, 1000\]"),
    ({"scale": 1.0, "offset_ms": -1e7, "models": 3}, "offset_ms. at most"),
    ({"scale": 1.0, "offset_ms": float("inf"), "models": 3}, "calibration.offset_ms: Input should be a finite"),
    ({"scale": 1.0, "models": 3}, "calibration.offset_ms: Field required"),
])
def test_invalid_calibrations_are_refused(tmp_path, calibration, message):
    path = tmp_path / "table.json"
    save_table(synthetic_table(), path)
    data = json.loads(path.read_text())
    data["calibration"] = calibration
    path.write_text(json.dumps(data))
    with pytest.raises(VitDeployError, match=message):
        load_table(path)


def test_show_says_n_a_for_error_figures_a_calibration_does_not_hold(tmp_path, capsys):
    from vitdeploy.cli import main

    path = tmp_path / "table.json"
    save_table(synthetic_table(), path)
    data = json.loads(path.read_text())
    data["calibration"] = {"scale": 1.0, "offset_ms": 0.0, "models": 2}
    path.write_text(json.dumps(data))
    assert main(["lut", "show", str(path)]) == 0
    assert "over 2 whole models (MAPE n/a → n/a)" in capsys.readouterr().out


def test_rescaled_multiplies_calibrated_predictions():
    spec = tiny_spec()
    table = replace(synthetic_table(), calibration=Calibration(scale=1.2, offset_ms=0.5, models=4))
    rescaled = table.rescaled(2.0)
    assert (rescaled.calibration.scale, rescaled.calibration.offset_ms) == pytest.approx((2.4, 1.0))
    assert predict(rescaled, spec)["total_ms"] == pytest.approx(2 * predict(table, spec)["total_ms"])
    assert table.calibration.scale == 1.2  # a copy
    plain = synthetic_table()
    assert predict(plain.rescaled(1.5), spec)["total_ms"] == pytest.approx(1.5 * predict(plain, spec)["total_ms"])
    with pytest.raises(VitDeployError, match="finite and > 0"):
        plain.rescaled(0.0)


# --- checks for the optimiser and the pruner ------------------------------------------------------

HINT = "`vitdeploy lut build --for fmnist_vit --backend onnxruntime --batch 64`"


@pytest.fixture
def this_cpu(monkeypatch):
    """This machine is the synthetic table's device."""
    monkeypatch.setattr("vitdeploy.lut.table.device_name", lambda device: "Test CPU @ 1.00GHz")


def test_require_table_for_accepts_the_tables_own_setup(this_cpu):
    require_table_for(replace(synthetic_table(), metadata=metadata(batch=64)), "onnxruntime", 64, "cpu", "fmnist_vit")


@pytest.mark.parametrize("asked, measured", [
    (("onnxruntime", 64, "cpu"), "at batch 8"),
    (("torch", 8, "cpu"), "with onnxruntime"),
    (("onnxruntime", 8, "cuda"), "on 'Test CPU @ 1.00GHz'"),
])
def test_require_table_for_refuses_another_setup_with_the_command_to_build_one(monkeypatch, asked, measured):
    monkeypatch.setattr("vitdeploy.lut.table.device_name",
                        lambda device: "Test GPU" if device == "cuda" else "Test CPU @ 1.00GHz")
    backend, batch, device = asked
    with pytest.raises(VitDeployError, match=measured) as caught:
        require_table_for(synthetic_table(), backend, batch, device, "fmnist_vit")
    message = str(caught.value)
    assert "\n" not in message
    assert f"`vitdeploy lut build --for fmnist_vit --backend {backend} --batch {batch}" in message
    assert message.endswith("--device cuda`") == (device == "cuda")


def test_require_coverage_accepts_a_model_inside_the_grid():
    require_coverage(synthetic_table(), tiny_spec(), "tiny")


def test_require_coverage_refuses_a_model_outside_the_grid_with_the_command():
    table = replace(synthetic_table(), metadata=metadata(batch=64))
    wide = tiny_spec(embed_dim=128, blocks=uniform_blocks(4, 128, 2))
    with pytest.raises(VitDeployError, match="does not cover fmnist_vit .*embed=128 outside") as caught:
        require_coverage(table, wide, "fmnist_vit")
    assert HINT in str(caught.value) and "more)" in str(caught.value)


def test_require_coverage_refuses_another_input_geometry_with_the_command():
    table = replace(synthetic_table(), metadata=metadata(batch=64))
    with pytest.raises(VitDeployError, match="32×32×3.*but fmnist_vit takes 48×48×3") as caught:
        require_coverage(table, tiny_spec(img_size=48), "fmnist_vit")
    assert HINT in str(caught.value)


def test_table_path_names_the_model_and_batch():
    meta = metadata(batch=64)
    assert table_path(meta, "t").name == "test-onnxruntime-fp32.json"
    assert table_path(meta, "t", model="fmnist_vit") == Path("t/test-onnxruntime-fp32-fmnist_vit-b64.json")
    assert table_path(meta, "t", model="a/b c").name == "test-onnxruntime-fp32-a-b-c-b64.json"


# --- building for a model -------------------------------------------------------------------------

def test_build_and_calibrate_for_the_tiny_model():
    spec = tiny_spec()
    grid = grid_for(spec)
    table = build_table("torch", BuildConfig(threads=1), grid, FAST_PLAN, device_batch=2, progress=False)
    assert table.metadata.grid["name"] == "for-tiny" and table.metadata.environment["part_onnx_opset"] == 20
    calibrated = calibrate_table(table, [spec, *random_pruned_specs(spec, 2, seed=0)], FAST_PLAN, progress=False)
    calibration = calibrated.calibration
    assert calibration.models == 3 and calibration.scale > 0 and np.isfinite(calibration.offset_ms)
    assert calibration.mape_loo_pct is not None and table.calibration is None
    require_coverage(calibrated, smallest_spec(spec, 8), "tiny")


def test_lut_build_for_a_model_directory_writes_a_calibrated_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lut_build, "BUILD_PLAN", FAST_PLAN)
    model = save_artifact(tiny_model(), tmp_path / "tiny")
    out = tmp_path / "tables"
    assert main(["lut", "build", "--for", str(model), "--backend", "torch", "--batch", "2", "--threads", "1",
                 "--calibrate", "2", "--out", str(out)]) == 0
    [path] = out.iterdir()
    assert path.name.endswith("-torch-fp32-tiny-b2.json")
    table = load_table(path)
    assert table.metadata.grid["name"] == "for-tiny" and table.calibration.models == 3
    assert "calibration: measured ≈" in capsys.readouterr().out
    assert main(["lut", "show", str(path)]) == 0
    assert "calibration: measured ≈" in capsys.readouterr().out
    assert main(["lut", "show", str(SHIPPED_TABLE)]) == 0
    assert "calibration: none" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--for", "no_such_model"], "unknown model 'no_such_model'"),
    (["--for", "fmnist_vit", "--grid", "quick"], "argument --grid: not allowed with argument --for"),
    (["--calibrate", "3"], "--calibrate applies only with --for"),
    (["--round-to", "16"], "--round-to applies only with --for"),
])
def test_lut_build_bad_input_is_one_line_and_exit_2(tmp_path, argv, message):
    result = run_cli("lut", "build", *argv, "--out", tmp_path / "tables")
    assert result.returncode == 2 and result.stderr.startswith("vitdeploy: error: ")
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "tables").exists()

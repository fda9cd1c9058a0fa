"""Latency lookup tables: interpolation, prediction, file format, random specs and a tiny build."""

import json
import math

import numpy as np
import pytest

from vitdeploy.backends import BuildConfig
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.errors import VitDeployError
from vitdeploy.lut import (
    Grid, LatencyTable, StemGeometry, build_table, default_grid, load_table, predict, predict_block,
    random_pruned_specs, refresh_table, save_table, table_path,
)
from vitdeploy.models.spec import TokenStep
from tests.conftest import tiny_spec
from tests.lut.synthetic import GRID, attention_macs, synthetic_table


def test_interpolation_is_exact_at_every_grid_point():
    table = synthetic_table(attention=lambda tokens, **_: np.random.default_rng(0).uniform(1, 9, tokens.shape))
    part = table.attention
    for index in np.ndindex(part.ms.shape):
        point = {axis: values[i] for (axis, values), i in zip(part.axes.items(), index)}
        value, outside = part.interpolate(point)
        assert value == pytest.approx(part.ms[index], rel=1e-12) and not outside


def test_multilinear_costs_are_predicted_exactly_between_grid_points():
    table = synthetic_table()
    tokens, embed, heads, qk, v, mlp = 17, 24, 3, 12, 20, 100  # every axis off the grid
    result = predict_block(table, tokens, embed, heads, qk, v, mlp, token_step=True)
    expected = {
        "attention": 0.5 + 1e-4 * attention_macs(tokens, embed, heads * qk, heads * v) + 0.01 * tokens * (heads - 2),
        "mlp": 0.25 + 2e-4 * tokens * embed * mlp,
        "token_step": 1e-3 * tokens * embed,
    }
    assert result.parts == pytest.approx(expected, rel=1e-12)
    assert result.ms == pytest.approx(sum(expected.values()), rel=1e-12)
    assert result.extrapolated == ()


@pytest.mark.parametrize("tokens, a, b", [(15, 10, 20), (30, 20, 40), (7, 5, 10)])
def test_quadratic_token_cost_error_is_the_hand_computed_chord_gap(tokens, a, b):
    table = synthetic_table(attention=lambda tokens, **_: tokens**2)
    value, _ = table.attention.interpolate({"tokens": tokens, "embed": 32, "qk_width": 16, "v_width": 32})
    # The chord of N² between a and b lies (N − a)(b − N) above it, at most (b − a)²/4.
    assert value - tokens**2 == pytest.approx((tokens - a) * (b - tokens))
    assert value - tokens**2 <= (b - a) ** 2 / 4


def test_beyond_the_grid_is_linear_extrapolation_and_flagged():
    table = synthetic_table()
    inside = predict_block(table, 40, 64, 2, 32, 32, 256)
    beyond = predict_block(table, 60, 64, 2, 32, 32, 256)
    assert inside.extrapolated == ()
    assert set(beyond.extrapolated) == {"attention.tokens=60 outside [5, 40]", "heads.tokens=60 outside [5, 40]",
                                        "mlp.tokens=60 outside [5, 40]"}
    # The synthetic parts are linear in N, so extrapolating from the edge interval is exact.
    assert beyond.parts["mlp"] == pytest.approx(0.25 + 2e-4 * 60 * 64 * 256)
    below = predict_block(synthetic_table(mlp=lambda tokens, **_: tokens - 4.0), 2, 64, 2, 32, 32, 256)
    assert below.parts["mlp"] == 0.0 and "mlp.tokens=2 outside [5, 40]" in below.extrapolated


def test_a_token_plan_lowers_the_latency_of_later_blocks():
    table = synthetic_table()
    dense = tiny_spec()
    pruned = dense.with_token_plan({1: TokenStep(keep=6, selector="cls_attn", package=True)})
    before, after = predict(table, dense), predict(table, pruned)
    assert [b["tokens"] for b in after["blocks"]] == [17, 17, 8, 8]
    assert after["blocks"][1]["token_step_ms"] > 0 and "token_step_ms" not in after["blocks"][0]
    assert after["blocks"][2]["ms"] < before["blocks"][2]["ms"]
    assert after["total_ms"] < before["total_ms"]
    assert before["total_ms"] == pytest.approx(before["fixed_ms"] + sum(b["ms"] for b in before["blocks"]))
    assert before["fixed_ms"] == pytest.approx(1.0 + 0.01 * 32) and not before["extrapolated"]


def test_a_model_of_another_input_geometry_is_refused_unless_blocks_only():
    table, spec = synthetic_table(), tiny_spec(img_size=48)
    with pytest.raises(VitDeployError, match="include_fixed=False"):
        predict(table, spec)
    assert predict(table, spec, include_fixed=False)["fixed_ms"] == 0.0


def test_save_and_load_round_trip(tmp_path):
    table = synthetic_table()
    path = table_path(table.metadata, tmp_path)
    assert path.name == "test-onnxruntime-fp32.json"
    save_table(table, path)
    loaded = load_table(path)
    assert loaded.metadata == table.metadata and loaded.key == table.key and loaded.stem == table.stem
    for name in ("attention", "heads", "mlp", "token_step", "fixed"):
        assert loaded.part(name).axes == table.part(name).axes
        np.testing.assert_allclose(loaded.part(name).ms, table.part(name).ms, rtol=5e-4, atol=1e-12)
    spec = tiny_spec()
    assert predict(loaded, spec)["total_ms"] == pytest.approx(predict(table, spec)["total_ms"], rel=1e-3)


def saved_json(tmp_path, table: LatencyTable):
    path = tmp_path / "table.json"
    save_table(table, path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(schema_version=2), "schema_version"),
    (lambda d: d.pop("mlp"), "mlp: Field required"),
    (lambda d: d["attention"]["ms"].pop(), "values for a grid"),
    (lambda d: d["mlp"]["axes"]["tokens"].reverse(), "strictly increasing"),
    (lambda d: d["mlp"]["axes"].pop("embed"), "axes must be"),
    (lambda d: d["fixed"].update(ms=[-1.0] * len(d["fixed"]["ms"])), "≥ 0"),
    (lambda d: d["metadata"].update(gpu="?"), "not a valid latency table: metadata.gpu: Unexpected keyword"),
    (lambda d: d["metadata"].update(batch="8"), "metadata.batch: Input should be a valid integer"),
    (lambda d: d.update(reference_heads=3), "reference_heads"),
])
def test_invalid_tables_raise_vitdeploy_error(tmp_path, damage, message):
    path, data = saved_json(tmp_path, synthetic_table())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(VitDeployError, match=message):
        load_table(path)


def test_unreadable_files_raise_vitdeploy_error(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema_version": 1,')
    with pytest.raises(VitDeployError, match="not valid JSON"):
        load_table(broken)
    with pytest.raises(VitDeployError, match="no such latency table"):
        load_table(tmp_path / "missing.json")
    broken.write_text("[1, 2]")
    with pytest.raises(VitDeployError, match="top level: Input should be an object"):
        load_table(broken)


def test_a_cpu_small_table_is_far_smaller_than_nvits(tmp_path):
    grid = default_grid("cpu-small")
    rng = np.random.default_rng(0)
    table = synthetic_table(grid, **{name: (lambda **axes: rng.uniform(0.1, 900.0, next(iter(axes.values())).shape))
                                     for name in ("attention", "heads", "mlp", "token_step", "fixed")})
    table.metadata.grid = grid.to_dict()
    path = tmp_path / "table.json"
    save_table(table, path)
    assert path.stat().st_size < 40_000  # NVlabs/NViT's latency_head.json is 314 KB
    assert load_table(path).attention.ms.shape == (5, 3, 6, 6)


def test_random_pruned_specs_are_valid_nvit_like_and_seeded():
    base = tiny_spec()
    specs = random_pruned_specs(base, 12, seed=3)
    assert [s.to_dict() for s in specs] == [s.to_dict() for s in random_pruned_specs(base, 12, seed=3)]
    assert [s.to_dict() for s in specs] != [s.to_dict() for s in random_pruned_specs(base, 12, seed=4)]
    assert len({s.name for s in specs}) == 12
    for spec in specs:
        spec.validate()
        assert spec.embed_dim == base.embed_dim
        for block, original in zip(spec.blocks, base.blocks):
            assert 1 <= block.heads <= original.heads
            for dim, full in ((block.qk_dim, original.qk_dim), (block.v_dim, original.v_dim),
                              (block.mlp_dim, original.mlp_dim)):
                assert dim % 8 == 0 and 0 < dim <= full
            assert block.scale == original.scale
            assert block.tokens.selector in ("none", "cls_attn")
    assert any(b.tokens.active for s in specs for b in s.blocks)
    assert any(s.blocks[0].mlp_dim < base.blocks[0].mlp_dim for s in specs)


def test_grids_validate():
    assert default_grid("cpu-small").tokens[-1] >= 198 and default_grid("quick").stem == StemGeometry(32, 8, 3, 5)
    with pytest.raises(VitDeployError, match="unknown grid"):
        default_grid("huge")
    with pytest.raises(VitDeployError, match="divisible by reference_heads"):
        Grid.from_dict({**GRID.to_dict(), "qk_width": [8, 9]})
    assert Grid.from_dict(json.loads(json.dumps(GRID.to_dict()))) == GRID


def test_refresh_remeasures_in_place_only_on_the_same_device(tmp_path):
    plan = TimingPlan(warmup=1, iters=3, rounds=1)
    table = build_table("torch", BuildConfig(threads=1), default_grid("quick"), plan, device_batch=2, progress=False)
    path = tmp_path / "quick.json"
    save_table(table, path)
    refreshed = refresh_table(path, progress=False)
    assert load_table(path).metadata == refreshed.metadata
    assert refreshed.key == table.key and refreshed.metadata.grid == table.metadata.grid
    assert refreshed.metadata.timing_plan == table.metadata.timing_plan
    data = json.loads(path.read_text())
    data["metadata"]["device"] = "Another CPU"
    path.write_text(json.dumps(data))
    with pytest.raises(VitDeployError, match="build a new table"):
        refresh_table(path, progress=False)
    assert json.loads(path.read_text()) == data


def test_build_table_on_the_quick_grid_with_onnxruntime(tmp_path):
    pytest.importorskip("vitdeploy.backends.onnxruntime")
    pytest.importorskip("onnxruntime")
    plan = TimingPlan(warmup=1, iters=3, rounds=1)
    table = build_table("onnxruntime", BuildConfig(threads=1), default_grid("quick"), plan, device_batch=2,
                        progress=False)
    for name in ("attention", "mlp", "fixed"):
        assert np.all(table.part(name).ms > 0), name
    assert np.all(table.token_step.ms >= 0) and np.all(np.isfinite(table.heads.ms))
    assert table.heads.ms[:, table.heads.axes["heads"].index(table.reference_heads)].tolist() == [0.0, 0.0]
    meta = table.metadata
    assert meta.device and meta.backend == "onnxruntime" and meta.batch == 2 and meta.threads == 1
    assert meta.grid["name"] == "quick" and meta.timing_plan["iters"] == 3 and "onnxruntime" in meta.environment
    path = tmp_path / "quick.json"
    save_table(table, path)
    result = predict(load_table(path), tiny_spec())
    assert result["total_ms"] > 0 and not result["extrapolated"] and math.isfinite(result["total_ms"])

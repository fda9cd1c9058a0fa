"""Whole models measured like a table (``vitdeploy.lut.measure``): real timings on this machine
for the plumbing, a simulated machine for what the checks compute from them."""

import math

import pytest

from tests.conftest import tiny_model, tiny_spec
from tests.lut.synthetic import table_for_this_machine
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.errors import VitDeployError
from vitdeploy.lut import measure
from vitdeploy.lut.table import predict, save_table
from vitdeploy.models.spec import uniform_blocks

QUICK = TimingPlan(warmup=1, iters=3, rounds=1)


def test_models_are_measured_on_the_tables_backend_and_batch():
    table = table_for_this_machine(tiny_spec())
    small = tiny_model(tiny_spec(embed_dim=16, blocks=uniform_blocks(4, 16, 2)))
    measured = measure.measure_models({"tiny": tiny_model(), "small": small}, table.metadata, QUICK)
    assert set(measured) == {"tiny", "small"}
    assert all(math.isfinite(ms) and ms > 0 for ms in measured.values())


def test_drift_correction_makes_the_table_predict_todays_measurement():
    model = tiny_model()
    corrected, drift = measure.drift_corrected(table_for_this_machine(model.spec), model, QUICK)
    assert predict(corrected, model.spec)["total_ms"] == pytest.approx(drift.measured_ms, rel=1e-9)
    assert drift.factor == pytest.approx(drift.measured_ms / drift.predicted_ms)


def test_latency_check_compares_ratios_within_one_run(monkeypatch):
    model, table = tiny_model(), table_for_this_machine(tiny_spec())
    smaller = tiny_model(tiny_spec(embed_dim=16, blocks=uniform_blocks(4, 16, 2)))
    raw = {id(m): predict(table, m.spec)["raw_ms"] for m in (model, smaller)}
    # this run is twice as slow as when the target was set, and the pruned model 10 % slower than predicted
    monkeypatch.setattr(measure, "measure_models", lambda models, *args, **kwargs: {
        "unpruned": 2 * raw[id(models["unpruned"])], "result": 2.2 * raw[id(models["result"])]})
    drift = measure.Drift(predicted_ms=raw[id(model)], measured_ms=raw[id(model)])
    target = 0.5 * raw[id(model)]
    check = measure.latency_check(table, drift, model, smaller, target)
    predicted_ratio = raw[id(smaller)] / raw[id(model)]
    assert check["predicted_ratio"] == pytest.approx(predicted_ratio)
    assert check["measured_ratio"] == pytest.approx(1.1 * predicted_ratio)
    assert check["prediction_error_pct"] == pytest.approx(100 / 11)
    assert check["target_error_pct"] == pytest.approx(100 * (1.1 * predicted_ratio / 0.5 - 1))


def test_a_table_for_another_model_is_refused_before_anything_is_timed(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "measure_models", lambda *args, **kwargs: pytest.fail("timed a model"))
    save_table(table_for_this_machine(tiny_spec(img_size=64)), tmp_path / "t.json")
    with pytest.raises(VitDeployError, match="lut build --for tiny"):
        measure.table_for_model(str(tmp_path / "t.json"), tiny_model())

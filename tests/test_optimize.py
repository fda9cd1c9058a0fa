"""`vitdeploy optimize`: candidates under the budget, the best proxy chosen, drift corrected, and
every refusal before any work. Measurements are simulated (a known multiple of the table's sum
of parts) so that what the optimiser does with them can be checked exactly; the harness itself
is tested in tests/bench."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_model, tiny_spec
from tests.lut.synthetic import table_for_this_machine
from vitdeploy.errors import VitDeployError
from vitdeploy.lut.table import LatencyTable, predict, save_table
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.optimize import OptimizeConfig, optimize

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
DRIFT = 1.1
"""Simulated machine: every model measures DRIFT × the table's sum of parts."""


class SimulatedMachine:
    """Measures every model at DRIFT × the raw prediction (sum of parts) of ``table``."""

    def __init__(self, table: LatencyTable):
        self.table = table

    def measure_models(self, models, metadata, plan=None):
        return {name: DRIFT * predict(self.table, model.spec)["raw_ms"] for name, model in models.items()}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    import vitdeploy.lut.measure as measure

    model = tiny_model(tiny_spec(num_classes=10))
    table = table_for_this_machine(model.spec)
    monkeypatch.setattr(measure, "measure_models", SimulatedMachine(table).measure_models)
    path = tmp_path / "table.json"
    save_table(table, path)
    return model, table, str(path)


def config(lut: str, budget_ms: float | None = None, **overrides) -> OptimizeConfig:
    fields = dict(budget_ms=budget_ms, lut=lut, resize=True, width_step=0.3, prune_step=0.2, step_finetune_steps=1,
                  finetune_steps=2, proxy_images=64, calib_size=32, batch_size=16, eval_limit=64)
    return OptimizeConfig(**{**fields, **overrides})


def unpruned_ms(model, table) -> float:
    return DRIFT * predict(table, model.spec)["raw_ms"]


def test_joint_search_keeps_candidates_under_budget_and_picks_the_best_proxy(setup, tmp_path):
    model, table, lut = setup
    budget = 0.6 * unpruned_ms(model, table)
    result = optimize(model, config(lut, budget), tmp_path / "out", progress=False)
    candidates = result["candidates"]
    assert len(candidates) >= 2 and candidates[0]["name"].startswith("unpruned structure")
    assert all(c["predicted_ms"] <= budget * (1 + 1e-9) for c in candidates)
    assert result["chosen"] == max(candidates, key=lambda c: (c["proxy_top1"], -c["predicted_ms"]))["name"]
    assert any(c["structure_ratio"] < 1 for c in candidates) and any(c["tokens"] for c in candidates)
    assert result["drift"]["factor"] == pytest.approx(DRIFT, rel=1e-3)
    final = result["final"]
    assert final["latency"]["prediction_error_pct"] < 0.5  # drift corrected: the table predicts the machine
    assert final["export"]["audit_passed"] and final["export"]["parity_max_abs_diff"] <= 1e-4
    written = json.loads((tmp_path / "out" / "optimize.json").read_text())
    assert written["chosen"] == result["chosen"]
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model", "model.onnx", "optimize.json", "optimize.md"}


@pytest.mark.parametrize("search", ["nvit", "tokens"])
def test_single_searches_give_one_kind_of_candidate(setup, tmp_path, search):
    model, table, lut = setup
    result = optimize(model, config(lut, budget_ratio=0.7, search=search), tmp_path / "out", progress=False)
    assert result["config"]["budget_ms"] == pytest.approx(0.7 * unpruned_ms(model, table), rel=1e-3)
    (candidate,) = result["candidates"]
    if search == "nvit":
        assert candidate["tokens"] is None and candidate["structure_ratio"] <= 0.7 + 1e-9
    else:
        assert candidate["structure_ratio"] == 1 and candidate["tokens"]["method"] == "star"


def test_budget_below_the_fastest_reachable_model_is_refused_before_any_work(setup, tmp_path):
    model, table, lut = setup
    with pytest.raises(VitDeployError, match="below the fastest model"):
        optimize(model, config(lut, 1e-6), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_table_for_another_batch_names_the_command_that_builds_the_right_one(setup, tmp_path):
    model, table, lut = setup
    with pytest.raises(VitDeployError, match="lut build --for tiny --backend onnxruntime --batch 64"):
        optimize(model, config(lut, 1.0, batch=64), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_table_of_another_model_is_refused(setup, tmp_path):
    model, _, _ = setup
    other = table_for_this_machine(tiny_spec(img_size=64, num_classes=10))
    save_table(other, tmp_path / "other.json")
    with pytest.raises(VitDeployError, match="lut build --for"):
        optimize(model, config(str(tmp_path / "other.json"), 1.0), tmp_path / "out", progress=False)


def test_cli_without_a_budget_exits_2(tmp_path):
    path = tmp_path / "m"
    save_artifact(tiny_model(tiny_spec(num_classes=10)), path)
    result = run_cli("optimize", path, "--lut", "t.json", "--out", tmp_path / "o")
    assert result.returncode == 2 and result.stderr.startswith("vitdeploy: error:") and "--budget-ms" in result.stderr
    assert not (tmp_path / "o").exists()


def test_nvit_latency_target_is_checked_against_a_measurement(setup):
    from vitdeploy.prune.nvit_config import NViTConfig
    from vitdeploy.prune.registry import PruneContext, get_method

    model, table, lut = setup
    target = 0.7 * unpruned_ms(model, table)
    config = NViTConfig(target_flops=None, target_latency_ms=target, lut=lut, prune_step=0.2, calib_batches=1,
                        batch_size=16, finetune_steps=1, final_finetune_steps=1)
    pruned, report = get_method("nvit").prune(model, config, PruneContext(data="fashion-mnist", resize=True,
                                                                          progress=False))
    latency = report["latency"]
    assert latency["drift"]["factor"] == pytest.approx(DRIFT, rel=1e-3)
    assert latency["target_ratio"] == pytest.approx(0.7, rel=1e-3)
    assert latency["measured_ratio"] <= 0.7 * (1 + 1e-3) and latency["prediction_error_pct"] < 0.5

"""`vitdeploy optimize`: candidates measured under the budget (remade when over), raced by
successive halving with the single-method runs, the final measurement's fallback, drift corrected,
and every refusal before any work. Measurements are simulated (a known multiple of the table's sum
of parts) so that what the optimiser does with them can be checked exactly; the harness itself
is tested in tests/bench."""

import json
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from tests.conftest import run_cli, tiny_model, tiny_spec
from tests.lut.synthetic import table_for_this_machine
from vitdeploy.errors import VitDeployError
from vitdeploy.lut.table import PART_AXES, LatencyTable, predict, save_table
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.optimize import OptimizeConfig, optimize

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
DRIFT = 1.1
"""Simulated machine: every model measures DRIFT × the table's sum of parts."""


class SimulatedMachine:
    """Measures every model at DRIFT × (the raw prediction (sum of parts) of ``table`` + ``overhead_ms``);
    the first ``slow_results`` final checks (a model named "result") measure ``slow_factor`` × that.
    Models measured for an INT8 table are predicted by ``int8`` instead."""

    def __init__(self, table: LatencyTable, overhead_ms: float = 0.0, slow_results: int = 0, slow_factor: float = 1.0,
                 int8: LatencyTable | None = None):
        self.tables, self.overhead_ms = {"fp32": table, "int8": int8}, overhead_ms
        self.slow_results, self.slow_factor = slow_results, slow_factor

    def measure_models(self, models, metadata, plan=None, progress=False):
        table = self.tables["int8" if metadata.precision == "int8" else "fp32"]
        times = {name: DRIFT * (predict(table, model.spec)["raw_ms"] + self.overhead_ms)
                 for name, model in models.items()}
        if "result" in times and self.slow_results > 0:
            self.slow_results -= 1
            times["result"] *= self.slow_factor
        return times


def simulate(monkeypatch, table: LatencyTable, **machine) -> SimulatedMachine:
    import vitdeploy.lut.measure as measure

    simulated = SimulatedMachine(table, **machine)
    monkeypatch.setattr(measure, "measure_models", simulated.measure_models)
    return simulated


def simulated_setup(tmp_path, monkeypatch, overhead_share: float = 0.0, **machine):
    """The tiny model, its table (saved as ``tmp_path``/table.json) and a simulated machine on which
    every model also pays ``overhead_share`` of the unpruned model's sum of parts."""
    model = tiny_model(tiny_spec(num_classes=10))
    table = table_for_this_machine(model.spec)
    overhead_ms = overhead_share * predict(table, model.spec)["raw_ms"]
    simulate(monkeypatch, table, overhead_ms=overhead_ms, **machine)
    path = tmp_path / "table.json"
    save_table(table, path)
    return model, table, str(path)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    return simulated_setup(tmp_path, monkeypatch)


def config(lut: str, budget_ms: float | None = None, **overrides) -> OptimizeConfig:
    fields = dict(budget_ms=budget_ms, lut=lut, resize=True, width_step=0.3, prune_step=0.2, step_finetune_steps=1,
                  rung_steps=1, finetune_steps=4, proxy_images=64, calib_size=32, batch_size=16, eval_limit=64)
    return OptimizeConfig(**{**fields, **overrides})


def unpruned_ms(model, table) -> float:
    return DRIFT * predict(table, model.spec)["raw_ms"]


def measured_within(candidate: dict, budget_ratio: float, tolerance: float = 0.01) -> bool:
    return candidate["measurements"][-1]["measured_ratio"] <= budget_ratio * (1 + tolerance) + 1e-9


def test_joint_search_measures_every_candidate_and_races_them_with_the_single_methods(setup, tmp_path):
    model, table, lut = setup
    result = optimize(model, config(lut, budget_ratio=0.6), tmp_path / "out", progress=False)
    candidates = {c["name"]: c for c in result["candidates"]}
    kinds = {c["kind"] for c in candidates.values()}
    assert kinds == {"joint", "nvit alone", "tokens alone"}
    assert {"unpruned + star", "unpruned + patch-slimming"} <= set(candidates) | {d["name"] for d in result["dropped"]}
    assert all(measured_within(c, 0.6) for c in candidates.values())
    rounds = result["rounds"]
    assert [r["steps"] for r in rounds] == [1, 3]  # 1 step for all, then 2 more for the better half
    assert set(rounds[0]["proxy"]) == set(candidates)
    last = rounds[-1]["proxy"]
    assert len(last) < len(candidates) and any(candidates[n]["kind"] == "nvit alone" for n in last)
    assert any(candidates[n]["kind"] == "tokens alone" for n in last)
    best = max(last, key=lambda n: (last[n], -candidates[n]["measurements"][-1]["measured_ratio"]))
    assert result["chosen"] == best
    final = result["final"]
    assert final["fine_tune_steps"] == 4 and final["within_budget"] and len(final["attempts"]) == 1
    assert final["latency"]["target_error_pct"] <= 1.0 + 1e-6
    assert final["export"]["audit_passed"] and final["export"]["parity_max_abs_diff"] <= 1e-4
    assert result["drift"]["factor"] == pytest.approx(DRIFT, rel=1e-3)
    written = json.loads((tmp_path / "out" / "optimize.json").read_text())
    assert written["chosen"] == result["chosen"]
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model", "model.onnx", "optimize.json", "optimize.md"}
    assert "single-method runs" in (tmp_path / "out" / "optimize.md").read_text()


def test_candidates_measured_over_budget_are_remade_for_a_corrected_goal(tmp_path, monkeypatch):
    # every model slower than its parts: savings shrink
    model, table, lut = simulated_setup(tmp_path, monkeypatch, overhead_share=0.15)
    result = optimize(model, config(lut, budget_ratio=0.6), tmp_path / "out", progress=False)
    assert result["savings_scale"] < 0.95
    assert any(len(c["measurements"]) > 1 for c in result["candidates"])
    assert all(measured_within(c, 0.6) for c in result["candidates"])
    assert result["final"]["within_budget"]


def test_a_final_measurement_over_budget_takes_the_next_candidate_down(tmp_path, monkeypatch):
    model, table, lut = simulated_setup(tmp_path, monkeypatch, slow_results=1, slow_factor=1.2)
    result = optimize(model, config(lut, budget_ratio=0.6), tmp_path / "out", progress=False)
    first, second = result["final"]["attempts"]
    assert not first["within_budget"] and first["target_error_pct"] > 3
    assert second["within_budget"] and result["chosen"] == second["candidate"] != first["candidate"]
    measured = {c["name"]: c["measurements"][-1]["measured_ratio"] for c in result["candidates"]}
    assert measured[second["candidate"]] < measured[first["candidate"]]
    chosen = next(c for c in result["candidates"] if c["name"] == result["chosen"])
    assert chosen["tuned_steps"] == 4 and "final attempt" in (tmp_path / "out" / "optimize.md").read_text()


@pytest.mark.parametrize("search", ["nvit", "tokens"])
def test_single_searches_give_one_kind_of_candidate(setup, tmp_path, search):
    model, table, lut = setup
    result = optimize(model, config(lut, budget_ratio=0.7, search=search), tmp_path / "out", progress=False)
    assert result["config"]["budget_ms"] == pytest.approx(0.7 * unpruned_ms(model, table), rel=1e-3)
    candidates = result["candidates"]
    if search == "nvit":
        (candidate,) = candidates
        assert candidate["kind"] == "nvit alone" and candidate["tokens"] is None
        assert candidate["structure_ratio"] <= 0.7 + 1e-9
    else:
        assert {c["kind"] for c in candidates} == {"tokens alone"}
        assert all(c["structure_ratio"] == 1 for c in candidates)
        assert {c["tokens"]["method"] for c in candidates} | {d["name"].split(" + ")[1] for d in result["dropped"]} \
            == {"star", "patch-slimming"}


def test_token_merging_joins_the_search_on_every_structure(setup, tmp_path):
    model, table, lut = setup
    result = optimize(model, config(lut, budget_ratio=0.65, tokens="tome", alone="tome"), tmp_path / "out",
                      progress=False)
    planned = [c for c in result["candidates"] if c["tokens"] is not None]
    assert {c["kind"] for c in planned} == {"joint", "tokens alone"}
    assert {c["tokens"]["method"] for c in planned} == {"tome"}
    assert all(c["tokens"]["knob"]["r_per_block"] and measured_within(c, 0.65) for c in planned)
    assert result["final"]["within_budget"] and result["final"]["export"]["audit_passed"]


def test_checked_ranking_fine_tunes_every_candidate_and_correlates_each_round(setup, tmp_path):
    model, table, lut = setup
    result = optimize(model, config(lut, budget_ratio=0.6, check_ranking=True), tmp_path / "out", progress=False)
    check = result["ranking_check"]
    assert all(c["tuned_steps"] == 4 and c["test_top1"] is not None and c["untuned_proxy"] is not None
               for c in result["candidates"])
    assert [c["steps"] for c in check["correlations"]] == [0] + [r["steps"] for r in result["rounds"]]
    assert check["best_by_test"] == max(result["candidates"], key=lambda c: c["test_top1"])["name"]


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
    from vitdeploy.prune.methods.nvit.config import NViTConfig
    from vitdeploy.prune.registry import METHODS, PruneContext

    model, table, lut = setup
    target = 0.7 * unpruned_ms(model, table)
    config = NViTConfig(target_flops=None, target_latency_ms=target, lut=lut, prune_step=0.2, calib_batches=1,
                        batch_size=16, finetune_steps=1, final_finetune_steps=1)
    pruned, report = METHODS.get("nvit").prune(model, config, PruneContext(data="fashion-mnist", resize=True,
                                                                          progress=False))
    latency = report["latency"]
    assert latency["drift"]["factor"] == pytest.approx(DRIFT, rel=1e-3)
    assert latency["target_ratio"] == pytest.approx(0.7, rel=1e-3)
    assert latency["measured_ratio"] <= 0.7 * (1 + 1e-3) and latency["prediction_error_pct"] < 0.5


@pytest.mark.parametrize("method", ["uniform", "star", "tome"])
def test_token_latency_target_is_drift_corrected_and_checked_against_a_measurement(setup, method):
    from vitdeploy.prune.registry import METHODS, PruneContext

    model, table, lut = setup
    target = 0.8 * unpruned_ms(model, table)  # today's machine is DRIFT × slower than the table
    config = METHODS.get(method).make_config({"target_latency_ms": target, "lut": lut})
    pruned, report = METHODS.get(method).prune(model, config, PruneContext(data="fashion-mnist", resize=True,
                                                                          progress=False))
    latency = report["latency"]
    assert latency["drift"]["factor"] == pytest.approx(DRIFT, rel=1e-3)
    assert latency["target_ratio"] == pytest.approx(0.8, rel=1e-3)
    assert 0.6 < latency["measured_ratio"] <= 0.8 * (1 + 1e-3)
    assert report["config"]["lut"] == lut


def test_a_token_latency_target_missed_when_measured_is_met_by_a_remade_plan(tmp_path, monkeypatch):
    from vitdeploy.prune.registry import METHODS, PruneContext

    # every model slower than its parts: the savings shrink, so the first plan measures over the target
    model, table, lut = simulated_setup(tmp_path, monkeypatch, overhead_share=0.15)
    target = 0.8 * DRIFT * 1.15 * predict(table, model.spec)["raw_ms"]
    config = METHODS.get("uniform").make_config({"target_latency_ms": target, "lut": lut})
    pruned, report = METHODS.get("uniform").prune(model, config, PruneContext(data=None, progress=False))
    latency = report["latency"]
    first, *_, last = latency["attempts"]
    assert len(latency["attempts"]) > 1 and first["measured_ratio"] > 0.8 * 1.01
    assert latency["measured_ratio"] == last["measured_ratio"] <= 0.8 * 1.01
    assert last["goal_ms"] < first["goal_ms"] == target and report["config"]["target_latency_ms"] == target


def test_a_plan_that_stays_over_the_target_is_reported_as_missed(tmp_path, monkeypatch):
    from vitdeploy.prune.registry import METHODS, PruneContext
    from vitdeploy.prune.summaries import latency_line

    # the method cannot go low enough
    model, table, lut = simulated_setup(tmp_path, monkeypatch, slow_results=99, slow_factor=1.6)
    config = METHODS.get("uniform").make_config({"target_latency_ms": 0.5 * unpruned_ms(model, table), "lut": lut})
    pruned, report = METHODS.get("uniform").prune(model, config, PruneContext(data=None, progress=False))
    latency = report["latency"]
    measured = [a["measured_ratio"] for a in latency["attempts"] if "measured_ratio" in a]
    assert latency["target_error_pct"] > 1 and any("refused" in a for a in latency["attempts"])
    assert len(measured) > 1 and latency["measured_ratio"] == min(measured)
    assert f"after {len(latency['attempts'])} tries" in latency_line(latency)


# --- INT8 candidates ----------------------------------------------------------------------------------

INT8_SPEEDUP = 1.5


def int8_of(table: LatencyTable) -> LatencyTable:
    """``table`` as an INT8 table whose every part runs INT8_SPEEDUP× faster."""
    parts = {name: replace(table.part(name), ms=table.part(name).ms / INT8_SPEEDUP) for name in PART_AXES}
    return replace(table, metadata=replace(table.metadata, precision="int8"), **parts)


@pytest.fixture
def int8_setup(tmp_path, monkeypatch):
    """The tiny model with an fp32 and an INT8 table, and a proxy that ranks larger models higher, so
    that an INT8 candidate (larger for the same budget) wins the race."""
    from vitdeploy.models.flops import total_macs
    from vitdeploy.optimize import run

    model = tiny_model(tiny_spec(num_classes=10))
    table = table_for_this_machine(model.spec)
    simulate(monkeypatch, table, int8=int8_of(table))
    save_table(table, tmp_path / "fp32.json")
    save_table(int8_of(table), tmp_path / "int8.json")
    monkeypatch.setattr(run._Data, "proxy_top1", lambda self, candidate: total_macs(candidate.spec) / 1e9)
    lut = {"lut": str(tmp_path / "fp32.json"), "int8_lut": str(tmp_path / "int8.json")}
    return model, config(budget_ratio=0.5, search="nvit", precisions="fp32,int8", max_drop=100.0, **lut)


def test_int8_candidates_are_measured_against_their_own_unpruned_model_and_an_int8_pick_is_written_quantized(
        int8_setup, tmp_path):
    model, settings = int8_setup
    result = optimize(model, settings, tmp_path / "out", progress=False)
    candidates = {c["precision"]: c for c in result["candidates"]}
    assert set(candidates) == {"fp32", "int8"} and candidates["int8"]["name"].startswith("int8 ")
    assert result["budget_ratios"]["int8"] == pytest.approx(0.5 * INT8_SPEEDUP, rel=1e-3)
    assert all(c["budget_share"] <= 1.01 for c in candidates.values())
    assert candidates["int8"]["structure_ratio"] > candidates["fp32"]["structure_ratio"]
    assert result["chosen"] == candidates["int8"]["name"]
    final = result["final"]
    assert final["precision"] == "int8" and final["within_budget"] and final["export"]["audit_passed"]
    assert final["top1"]["optimized"] == final["int8"]["accuracy"]["int8_top1"]
    assert final["latency"]["target_ratio"] == pytest.approx(0.5 * INT8_SPEEDUP, rel=1e-3)
    out = tmp_path / "out"
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops and (out / "model.quantize.json").is_file()
    assert not (out / "model.export.json").exists() and (out / "latency_table.int8.json").is_file()
    assert "INT8 Q/DQ (onnxruntime)" in (out / "optimize.md").read_text()


def test_an_int8_pick_that_loses_too_much_accuracy_gives_way_to_the_next_candidate(int8_setup, tmp_path,
                                                                                   monkeypatch):
    import vitdeploy.quantize.ptq as ptq

    def refuse(*args, **kwargs):
        raise VitDeployError("INT8 loses 5.00 top-1 points")

    monkeypatch.setattr(ptq, "quantize_model", refuse)
    model, settings = int8_setup
    result = optimize(model, settings, tmp_path / "out", progress=False)
    refused, kept = result["final"]["attempts"]
    assert refused["candidate"].startswith("int8 ") and "5.00 top-1 points" in refused["refused"]
    assert result["chosen"] == kept["candidate"] and result["final"]["precision"] == "fp32" and kept["within_budget"]
    out = tmp_path / "out"
    assert (out / "model.export.json").is_file() and not (out / "model.quantize.json").exists()
    assert "refused: INT8 loses" in (out / "optimize.md").read_text()

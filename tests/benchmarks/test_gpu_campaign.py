"""The GPU campaign (benchmarks/gpu_campaign.py) end to end on CPU (--smoke), so that it cannot rot
while it waits for a GPU, plus its time guard and its fallback for variants that fail."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_model
from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.hardware import cpu_name, device_slug
from vitdeploy.bench.harness import TimingPlan

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_campaign.py"
STAGES = ("matmul_peak", "fmnist", "tests", "speed", "train_throughput", "torchrun_smoke", "latency_table")


def run_campaign(*args, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=REPO,
                          capture_output=True, text=True)


def numbers(value):
    """Every number inside a JSON value."""
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("campaign")
    completed = run_campaign("--device", "cpu", "--smoke", out=out)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    slug = device_slug(cpu_name())
    return out, slug, json.loads((out / f"{slug}-campaign.json").read_text())


@pytest.mark.slow
def test_smoke_writes_every_file_named_after_the_device(smoke):
    out, slug, results = smoke
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{slug}-{suffix}" for suffix in ("campaign.json", "campaign.md", "campaign-tests.log", "torch-bf16.json"))
    assert results["device"] == cpu_name() and results["smoke"] is True
    markdown = (out / f"{slug}-campaign.md").read_text()
    assert "## Speed" in markdown and "MAPE" in markdown and "TensorRT: not executed" in markdown
    assert "## Training throughput" in markdown and "## torchrun smoke: exit status 0" in markdown


@pytest.mark.slow
def test_smoke_runs_every_stage_with_finite_results(smoke):
    _, _, results = smoke
    assert {name: stage["status"] for name, stage in results["stages"].items()} == dict.fromkeys(STAGES, "ok")
    assert all(math.isfinite(n) for n in numbers(results))


@pytest.mark.slow
def test_smoke_times_every_variant_at_every_batch(smoke):
    _, _, results = smoke
    speed = results["stages"]["speed"]
    [group] = speed["groups"]
    assert group["failed"] == {}
    rows = {(r["variant"], r["batch"]): r for r in group["rows"]}
    variants = set(speed["shapes"]["smoke-vit"])
    assert set(rows) == {(v, b) for v in variants for b in (1, 2)} and len(variants) == 7
    assert all(r["median_ms"] > 0 and r["p99_ms"] >= r["median_ms"] and r["mfu"] > 0 for r in rows.values())
    assert rows[("baseline", 1)]["speedup"] == 1.0 and rows[("baseline", 1)]["flops_reduction"] == 1.0
    assert 1.9 < rows[("NViT-shaped 0.5× FLOPs", 1)]["flops_reduction"] < 2.1
    assert rows[("keep 4:0.7,7:0.7,10:0.7", 1)]["flops_reduction"] > 1.2
    assert rows[("ToMe", 1)]["flops_reduction"] > 1.05
    assert speed["shapes"]["smoke-vit"]["2:4"]["sparsity"] == "2:4"
    assert not any(r["sparse_kernels"] for r in rows.values())  # no 2:4 kernels on a CPU


@pytest.mark.slow
def test_smoke_measures_accuracy_table_and_tests(smoke):
    _, _, results = smoke
    stages = results["stages"]
    assert stages["matmul_peak"]["peaks"]["bf16"]["tflops"] > 0
    fmnist = {(r["device"], r["precision"]): r for r in stages["fmnist"]["rows"]}
    assert fmnist[("cpu", "fp32")]["agreement"] == 1.0 and fmnist[("cpu", "fp32")]["top1"] > 0.5
    assert fmnist[("cpu", "bf16")]["agreement"] > 0.8 and stages["fmnist"]["images"] == 64
    table = stages["latency_table"]
    assert len(table["models"]) == 2 and table["mape_pct"] >= 0
    assert all(run["returncode"] == 0 and run["skipped"] > 0 for run in stages["tests"]["runs"])


@pytest.mark.slow
def test_smoke_measures_training_throughput_and_trains_under_torchrun(smoke):
    _, _, results = smoke
    train = results["stages"]["train_throughput"]
    engine, anchor = train["engine"], train["anchor"]
    assert train["model"] == "smoke-train" and train["precision"] == "bf16"
    assert engine["images_per_s"] > 0 and anchor["images_per_s"] > 0 and engine["batch"] == anchor["batch"] == 8
    assert 0 <= engine["data_wait_fraction"] <= 1
    assert engine["anchor_ratio"] == pytest.approx(engine["images_per_s"] / anchor["images_per_s"])
    assert train["meets_goals"]["data_wait"] == (engine["data_wait_fraction"] < train["goals"]["data_wait_fraction"])
    torchrun = results["stages"]["torchrun_smoke"]
    assert torchrun["returncode"] == 0 and not torchrun["timed_out"]
    assert "torch.distributed.run" in torchrun["command"] and "test top-1" in torchrun["output_tail"][-1]


def test_a_spent_budget_skips_every_stage_and_fails(tmp_path):
    completed = run_campaign("--device", "cpu", "--smoke", "--budget-s", "0", out=tmp_path)
    assert completed.returncode == 1
    results = json.loads(next(tmp_path.glob("*-campaign.json")).read_text())
    assert {stage["status"] for stage in results["stages"].values()} == {"skipped"}


def test_the_full_campaign_on_cpu_is_a_user_error(tmp_path):
    completed = run_campaign("--device", "cpu", out=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.startswith("vitdeploy: error:") and len(completed.stderr.strip().splitlines()) == 1


def test_a_variant_that_cannot_run_is_reported_and_the_rest_benched(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from gpu_campaign import bench_with_fallback

    sources = {"baseline": ModelSource("baseline", tmp_path, model=tiny_model()),
               "broken": ModelSource("no_such_model", tmp_path)}
    rows, failed = bench_with_fallback(sources, BuildConfig(batch_sizes=(1,), threads=1),
                                       TimingPlan(warmup=0, iters=1, rounds=1))
    assert [row["name"] for row in rows] == ["baseline"]
    assert set(failed) == {"broken"} and "unknown model" in failed["broken"]


def test_the_markdown_shows_failed_stages_and_groups(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from campaign_report import campaign_markdown

    results = {"device": "NVIDIA H200", "smoke": False, "command": "python3 gpu_campaign.py", "elapsed_s": 1.0,
               "environment": {"torch": "2.11.0", "gpu": {"cuda_runtime": "13.0", "driver": "580"}},
               "stages": {"matmul_peak": {"status": "error", "error": "RuntimeError: boom", "seconds": 0.1},
                          "speed": {"status": "error", "seconds": 2.0, "skipped": [], "shapes": {},
                                    "groups": [{"model": "deit_base_patch16_224", "precision": "fp16",
                                                "error": "torch.OutOfMemoryError: CUDA out of memory"}]},
                          "torchrun_smoke": {"status": "error", "seconds": 9.0, "returncode": 1, "timed_out": False,
                                             "command": "python3 -m torch.distributed.run -m vitdeploy train",
                                             "output_tail": ["vitdeploy: error: cannot join the torchrun job"]},
                          "latency_table": {"status": "skipped", "reason": "the time budget (--budget-s) was spent"}}}
    markdown = campaign_markdown(results)
    assert "## matmul_peak: error" in markdown and "RuntimeError: boom" in markdown
    assert "### deit_base_patch16_224 fp16: error" in markdown and "CUDA out of memory" in markdown
    assert "## torchrun smoke: exit status 1" in markdown and "cannot join the torchrun job" in markdown
    assert re.search(r"\| latency_table +\| skipped +\|", markdown)

"""The timing harness, device facts and benchmark reports, on fake engines and a fake clock."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vitdeploy import hardware
from vitdeploy.bench import harness
from vitdeploy.bench.harness import Measurement, TimingPlan, time_engine, time_interleaved
from vitdeploy.bench.report import BenchResult, load_result, markdown_table, ratio_rows, write_result
from vitdeploy.errors import VitDeployError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    """Stands in for ``time.perf_counter`` in the harness; only fake engines move it."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def perf_counter(self) -> float:
        return self.seconds


class FakeEngine:
    """An Engine whose runs take ``latencies_ms`` in turn (cycling) on a fake clock, logged by name."""

    backend = "fake"
    device = "cpu"
    device_name = "fake cpu"

    def __init__(self, name: str, clock: FakeClock, latencies_ms: list[float], log: list[str]) -> None:
        self.name, self.clock, self.latencies_ms, self.log = name, clock, latencies_ms, log
        self.runs = self.stages = self.syncs = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 5), np.float32)

    def stage(self, batch: np.ndarray) -> np.ndarray:
        self.stages += 1
        return batch

    def run(self, staged: np.ndarray) -> None:
        self.clock.seconds += self.latencies_ms[self.runs % len(self.latencies_ms)] / 1e3
        self.runs += 1
        self.log.append(self.name)

    def synchronize(self) -> None:
        self.syncs += 1

    def metadata(self) -> dict:
        return {"backend": self.backend, "precision": "fp32", "threads": 1}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(harness, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def batch_of(size: int) -> np.ndarray:
    return np.zeros((size, 3, 8, 8), np.float32)


# --- harness -------------------------------------------------------------------------------------

def test_time_engine_discards_warmup_and_keeps_iters_samples(clock: FakeClock) -> None:
    log: list[str] = []
    engine = FakeEngine("a", clock, latencies_ms=[float(i) for i in range(1, 100)], log=log)
    measurement = time_engine(engine, "a", batch_of(4), TimingPlan(warmup=3, iters=7))
    assert engine.runs == 3 + 7 and engine.syncs == engine.runs and engine.stages == 1
    assert measurement.latencies_ms == pytest.approx([4, 5, 6, 7, 8, 9, 10])  # runs 1–3 were warmup
    assert measurement.batch == 4 and measurement.metadata["backend"] == "fake"


def test_time_engine_keeps_timing_until_min_seconds(clock: FakeClock) -> None:
    engine = FakeEngine("a", clock, latencies_ms=[1.0], log=[])
    measurement = time_engine(engine, "a", batch_of(1), TimingPlan(warmup=0, iters=2, min_seconds=0.02))
    assert len(measurement.latencies_ms) >= 20


def test_time_interleaved_equal_samples_and_rotating_order(clock: FakeClock) -> None:
    log: list[str] = []
    engines = {name: FakeEngine(name, clock, [ms], log) for name, ms in (("a", 4.0), ("b", 2.0), ("c", 1.0))}
    rounds_seen: list[int] = []
    plan = TimingPlan(warmup=2, iters=6, rounds=3)
    results = time_interleaved(engines, batch_of(2), plan, on_round=rounds_seen.append)

    assert {name: len(m.latencies_ms) for name, m in results.items()} == {"a": 6, "b": 6, "c": 6}
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]  # warmup
    timed = log[6:]
    round_orders = [list(dict.fromkeys(timed[i:i + 6])) for i in range(0, len(timed), 6)]
    assert round_orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert rounds_seen == [0, 1, 2]
    assert results["a"].median_ms == pytest.approx(4.0) and results["c"].median_ms == pytest.approx(1.0)


def test_measurement_percentiles_match_numpy() -> None:
    latencies = [float(x) for x in range(1, 101)]
    random.Random(0).shuffle(latencies)
    measurement = Measurement("m", 8, latencies)
    assert measurement.median_ms == pytest.approx(np.median(latencies))
    assert measurement.p90_ms == pytest.approx(np.percentile(latencies, 90))
    assert measurement.p99_ms == pytest.approx(np.percentile(latencies, 99))
    assert measurement.p90_ms == pytest.approx(90.1) and measurement.p99_ms == pytest.approx(99.01)


def test_throughput_is_batch_over_median() -> None:
    assert Measurement("m", 8, [3.0, 4.0, 5.0]).throughput == pytest.approx(2000.0)  # 8 images / 4 ms


# --- report --------------------------------------------------------------------------------------

ENVIRONMENT = {"cpu": "Test CPU", "cpu_count": 2, "gpu": None, "python": "3.12.0", "torch": "2.13.0",
               "threads": 2, "utc": "2025-01-01T00:00:00+00:00"}
CONFIG = {"batch_sizes": [1, 8], "backend": "fake", "precision": "fp32", "threads": 2,
          "timing": asdict(TimingPlan(warmup=2, iters=6, rounds=3))}


def fake_result() -> BenchResult:
    """A base model and one exactly twice as fast, at batch 1 and 8, from given latencies."""
    metadata = {"backend": "fake", "precision": "fp32"}
    measurements = []
    for batch, base_ms in ((1, 4.0), (8, 20.0)):
        measurements.append(Measurement("base", batch, [base_ms * f for f in (0.9, 1.0, 1.3)], metadata))
        measurements.append(Measurement("pruned", batch, [base_ms / 2 * f for f in (0.9, 1.0, 1.3)], metadata))
    return BenchResult.from_measurements("fake comparison", measurements, CONFIG, ENVIRONMENT,
                                         macs={"base": 4_600_000_000, "pruned": 2_300_000_000})


def test_ratio_to_first_from_given_latencies() -> None:
    rows = fake_result().rows
    ratios = {(row["model"], row["batch"]): row["ratio_to_first"] for row in rows}
    assert ratios == pytest.approx({("base", 1): 1.0, ("base", 8): 1.0, ("pruned", 1): 2.0, ("pruned", 8): 2.0})


def test_ratio_is_none_where_first_model_has_no_row() -> None:
    rows = [{"model": "a", "backend": "x", "precision": "fp32", "batch": 1, "throughput": 10.0},
            {"model": "b", "backend": "x", "precision": "fp32", "batch": 1, "throughput": 30.0},
            {"model": "b", "backend": "x", "precision": "fp32", "batch": 8, "throughput": 90.0}]
    assert [row["ratio_to_first"] for row in ratio_rows(rows)] == [1.0, 3.0, None]


def test_rows_carry_model_backend_precision_macs() -> None:
    row = fake_result().rows[1]
    assert (row["model"], row["backend"], row["precision"], row["macs"]) == ("pruned", "fake", "fp32", 2_300_000_000)
    assert row["median_ms"] == pytest.approx(2.0) and row["throughput"] == pytest.approx(500.0)


def test_markdown_has_one_row_per_model_and_batch() -> None:
    table = markdown_table(fake_result())
    seen = []
    for section in table.split("### batch ")[1:]:
        batch = int(section.split("\n", 1)[0])
        lines = [line for line in section.splitlines() if line.startswith("|")]
        seen += [(line.split("|")[1].strip(), batch) for line in lines[2:]]  # after header and rule
    assert sorted(seen) == [("base", 1), ("base", 8), ("pruned", 1), ("pruned", 8)]
    assert "2.00×" in table and "throughput (img/s)" in table


def test_write_result_round_trip_and_files(tmp_path: Path) -> None:
    result = fake_result()
    paths = write_result(result, tmp_path / "deit.cpu")
    assert [p.name for p in paths] == ["deit.cpu.json", "deit.cpu.md", "deit.cpu.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left

    loaded = load_result(paths[0])
    assert loaded.to_dict() == json.loads(json.dumps(result.to_dict()))
    assert loaded.environment == ENVIRONMENT and loaded.config == CONFIG and len(loaded.rows) == 4

    markdown = paths[1].read_text()
    assert markdown.startswith("# fake comparison") and "Test CPU" in markdown
    assert paths[2].read_bytes()[:8] == PNG_MAGIC


def test_load_result_rejects_other_json(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"something": 1}')
    with pytest.raises(VitDeployError, match="not a benchmark result"):
        load_result(other)


def test_from_measurements_reads_this_machine_when_no_environment_given() -> None:
    result = BenchResult.from_measurements("t", [Measurement("m", 1, [1.0])], {"threads": 3})
    assert result.environment["cpu"] == hardware.cpu_name() and result.environment["threads"] == 3


# --- device --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, slug", [
    ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
    ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "intel-xeon-platinum-8481c"),
    ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "intel-core-i7-8700"),
    ("AMD EPYC", "amd-epyc"),
    ("(R)", "unknown-device"),
])
def test_device_slug(name: str, slug: str) -> None:
    assert hardware.device_slug(name) == slug


def test_cpu_name_reads_model_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Fake CPU 9000 @ 1.00GHz\n")
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)
    assert hardware.cpu_name() == "Fake CPU 9000 @ 1.00GHz"


def test_cpu_name_falls_back_without_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "missing")
    assert hardware.cpu_name()


def test_cpu_name_and_count_here() -> None:
    assert hardware.cpu_name().strip() and hardware.cpu_count() >= 1


def test_gpu_info_none_without_cuda_and_never_initialises(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("gpu_info touched CUDA although no GPU is available")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("_lazy_init", "init", "get_device_name", "get_device_properties", "get_device_capability"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    monkeypatch.setattr(hardware, "nvidia_driver_version", forbidden)
    was_initialised = torch.cuda.is_initialized()
    assert hardware.gpu_info() is None
    assert torch.cuda.is_initialized() is was_initialised


def test_gpu_info_reads_torch_when_a_gpu_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(total_memory=85 << 30))
    monkeypatch.setattr(hardware, "nvidia_driver_version", lambda index: "550.54.15")
    info = hardware.gpu_info()
    assert info is not None
    assert (info["name"], info["compute_capability"], info["total_memory_bytes"], info["driver"]) == (
        "NVIDIA H100 80GB HBM3", "9.0", 85 << 30, "550.54.15")
    assert info["cuda_runtime"] == torch.version.cuda


def test_driver_version_none_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    assert hardware.nvidia_driver_version() is None


def test_the_cpu_generation_tells_apart_cpus_sold_under_one_name(tmp_path, monkeypatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 26\nmodel\t\t: 2\n"
                       "flags\t\t: fpu avx2 avx512f avx512_vnni\n\nprocessor\t: 1\nmodel name\t: other\n")
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)
    assert hardware.cpu_name() == "AMD EPYC"
    assert hardware.cpu_generation() == {"family": "26", "model": "2", "isa": ["avx2", "avx512f", "avx512_vnni"]}
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "missing")
    assert hardware.cpu_generation() == {"family": None, "model": None, "isa": []}


def test_environment_is_json_ready() -> None:
    env = json.loads(json.dumps(hardware.environment(threads=2)))
    assert env["threads"] == 2 and env["cpu"] and env["cpu_count"] >= 1
    assert env["numpy"] == np.__version__ and env["torch"] == torch.__version__
    assert "gpu" in env and datetime.fromisoformat(env["utc"]).utcoffset().total_seconds() == 0

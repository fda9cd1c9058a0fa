"""benchmarks/train_throughput.py end to end on the CPU (--smoke): the engine under torchrun with one
and with two processes on the same cores, each row next to the plain training loop."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vitdeploy.hardware import cpu_count, cpu_name, device_slug

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "train_throughput.py"


def run_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_smoke_measures_one_and_two_processes_against_the_anchor(tmp_path):
    completed = run_script("--smoke", "--device", "cpu", "--processes", "1,2", "--out", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    path = tmp_path / f"train-throughput-{device_slug(cpu_name())}.json"
    assert completed.stdout.strip() == str(path)
    result = json.loads(path.read_text())
    rows = {row["processes"]: row for row in result["rows"]}
    assert set(rows) == {1, 2}
    anchor = result["anchor"]
    assert anchor["images_per_s"] > 0 and anchor["threads"] == cpu_count()
    for processes, row in rows.items():
        assert row["threads"] == max(1, cpu_count() // processes)
        assert row["images_per_s"] > 0 and row["s_per_step"] > 0
        assert 0 <= row["data_wait_fraction"] <= 1
        assert row["anchor_ratio"] > 0
        assert row["anchor_ratio"] == pytest.approx(row["images_per_s"] / anchor["images_per_s"])
    table_rows = [line for line in path.with_suffix(".md").read_text().splitlines() if line.startswith("| ")]
    assert len(table_rows) == 3  # the header and one row per process count


def test_the_folder_holds_one_epoch_of_the_run_linked_to_the_distinct_jpegs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from train_throughput import JPEG_SIZE, ThroughputPlan, write_training_folder
    from PIL import Image

    root = write_training_folder(tmp_path, ThroughputPlan(batch=4, steps=2, warmup=1, images=3), num_classes=2)
    listed = sorted((root / "train").rglob("*.jpg"))
    assert len(listed) == 12 and sorted(p.parent.name for p in listed).count("class_00") == 6
    assert {p.stat().st_ino for p in listed} == {p.stat().st_ino for p in (root / "originals").iterdir()}
    with Image.open(listed[0]) as image:
        assert image.size == JPEG_SIZE and image.mode == "RGB"


def test_a_process_count_below_one_is_refused():
    completed = run_script("--processes", "1,0")
    assert completed.returncode == 2 and "at least 1" in completed.stderr

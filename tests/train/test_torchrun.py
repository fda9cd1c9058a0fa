"""Commands under ``torchrun --nproc-per-node 2`` (gloo on the CPU) against the same command in one
process: the same optimisation, the same decisions, each test image counted once, one writer,
and a job that stops as a whole when one of its processes dies.

Training data is a generated ImageFolder of real JPEG files, so decoding, the DeiT augmentations
and the loader workers run for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_model
from tests.data.jpeg_folder import write_jpeg_folder
from vitdeploy.models.checkpoint import save_artifact

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LOSS_TOLERANCE = 1e-5


def vitdeploy(processes: int, *args, cwd: Path, wait: bool = True):
    """``vitdeploy ARGS`` in one process, or under torchrun with ``processes`` processes."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", "vitdeploy"]
    command = [sys.executable, *(launcher if processes > 1 else ["-m", "vitdeploy"]), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny model (5 classes, 32×32 RGB) and a JPEG folder with train and test splits (3 classes,
    15 images each: the 45 test images split unevenly over 2 processes)."""
    root = tmp_path_factory.mktemp("torchrun")
    save_artifact(tiny_model(), root / "tiny")
    write_jpeg_folder(root / "jpegs", per_class=15, classes=3, size=32, splits=("train", "test"))
    return root


def both(work: Path, name: str, *args) -> tuple[Path, Path]:
    """Run ``args`` with ``--out`` in one process and in two; return both output directories."""
    outs = work / f"{name}-1", work / f"{name}-2"
    for processes, out in zip((1, 2), outs):
        vitdeploy(processes, *args, "--out", out, cwd=work)
    return outs


def report(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


def assert_same_weights(one: Path, two: Path, tolerance: float) -> None:
    a, b = load_file(one / "weights.safetensors"), load_file(two / "weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=tolerance, rtol=0)


def test_train_is_the_same_optimisation_in_one_and_two_processes(work):
    one, two = both(work, "train", "train", "--model", "fmnist_vit", "--data", "fashion-mnist", "--limit", 256,
                    "--epochs", 2, "--batch-size", 32, "--threads", 1, "--quiet")
    first, second = report(one, "train.json")["history"], report(two, "train.json")["history"]
    assert [r["test_top1"] for r in first] == [r["test_top1"] for r in second]
    assert [r["loss"] for r in second] == pytest.approx([r["loss"] for r in first], abs=LOSS_TOLERANCE)
    # the gradients are summed in another order; AdamW turns a near-zero gradient's rounding into a
    # whole normalised step for that weight, so a few weights differ by up to ~lr/10 after 16 steps
    assert_same_weights(one, two, 3e-4)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # no temporaries from either process


def test_nvit_importance_spec_and_augmented_fine_tune_match(work):
    one, two = both(work, "nvit", "prune", "nvit", work / "tiny", "--calib", work / "jpegs", "--target-flops", 0.8,
                    "--prune-step", 0.2, "--calib-batches", 2, "--batch-size", 8, "--finetune-steps", 20,
                    "--final-finetune-steps", 0, "--workers", 1, "--threads", 1, "--quiet")
    assert report(one, "spec.json") == report(two, "spec.json")
    steps_one, steps_two = report(one, "prune.json")["steps"], report(two, "prune.json")["steps"]
    for a, b in zip(steps_one, steps_two, strict=True):
        assert [(r["dim"], r["count"]) for r in a["removed"]] == [(r["dim"], r["count"]) for r in b["removed"]]
        assert [r["importance_share"] for r in b["removed"]] == pytest.approx(
            [r["importance_share"] for r in a["removed"]], rel=1e-4)
        assert len(a["finetune_losses"]) == 20
        assert b["finetune_losses"] == pytest.approx(a["finetune_losses"], abs=LOSS_TOLERANCE)


@pytest.mark.parametrize("method, knob", [("star", ("--target-flops", 0.7)), ("patch-slimming", ("--epsilon", 0.05))])
def test_token_calibrations_give_the_same_plan(work, method, knob):
    one, two = both(work, method, "prune", method, work / "tiny", "--calib", work / "jpegs", *knob,
                    "--calib-size", 24, "--threads", 1, "--quiet")
    plans = [[block.get("tokens") for block in report(out, "spec.json")["blocks"]] for out in (one, two)]
    assert any(plans[0])
    for a, b in zip(*plans, strict=True):
        scores = [step.pop("inter_scores", None) if step else None for step in (a, b)]
        assert a == b  # the same kept counts, positions and selectors
        if scores[0] is not None:  # STAR's stored scores: sums over other shards, equal up to rounding
            assert scores[1] == pytest.approx(scores[0], rel=1e-6)


def test_eval_counts_every_test_image_once(work):
    args = ("eval", work / "tiny", "--data", work / "jpegs", "--no-onnx", "--json")
    one, two = (json.loads(vitdeploy(n, *args, cwd=work)) for n in (1, 2))
    assert one["images"] == two["images"] == 45
    assert two["torch_top1"] == one["torch_top1"]


def test_a_killed_process_stops_the_job_and_leaves_the_earlier_output(work):
    out = work / "killed"
    vitdeploy(1, "train", "--data", "fashion-mnist", "--limit", 64, "--epochs", 1, "--batch-size", 32, "--threads", 1,
              "--quiet", "--out", out, cwd=work)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    job = vitdeploy(2, "train", "--data", "fashion-mnist", "--limit", 4096, "--epochs", 50, "--batch-size", 32,
                    "--threads", 1, "--out", out, cwd=work, wait=False)
    err = wait_for_training(job)
    os.kill(max(worker_ids(job)), signal.SIGKILL)
    err += job.communicate(timeout=120)[1]
    assert job.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("vitdeploy:")]  # torchrun adds its own report
    assert len(ours) == 1, err
    assert ours[0].startswith(("vitdeploy: error: another process of this torchrun job", "vitdeploy: interrupted"))
    assert f'File "{REPO / "vitdeploy"}' not in err  # no traceback from the surviving process
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in work.iterdir() if p.name.startswith(".killed")]


def wait_for_training(job: subprocess.Popen, timeout: float = 120) -> str:
    """What the job printed until the first process's progress bar showed a finished step."""
    deadline, seen = time.monotonic() + timeout, ""
    while "1/128" not in seen:
        assert job.poll() is None and time.monotonic() < deadline, seen[-2000:]
        seen += os.read(job.stderr.fileno(), 4096).decode(errors="replace")
    return seen


def worker_ids(job: subprocess.Popen) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2, children
    return list(map(int, children))


def test_a_resumed_job_continues_its_run_and_refuses_another_world_size(work):
    spvit = ("prune", "spvit", work / "tiny", "--data", work / "jpegs", "--budget-flops", 0.7, "--batch-size", 8,
             "--val-size", 13, "--workers", 0, "--threads", 1, "--quiet", "--out", work / "spvit")
    vitdeploy(2, *spvit, "--epochs", 1, cwd=work)
    first = report(work / "spvit", "prune.json")
    vitdeploy(2, *spvit, "--epochs", 2, cwd=work)
    extended = report(work / "spvit", "prune.json")
    assert first["resumed_from_epoch"] == 0 and extended["resumed_from_epoch"] == 1
    assert extended["history"][0] == first["history"][0] and len(extended["history"]) == 2
    before = tree(work / "spvit.spvit-work")
    single = vitdeploy(1, *spvit, "--epochs", 3, cwd=work, wait=False)
    _, err = single.communicate(timeout=300)
    assert single.returncode == 2 and err.startswith("vitdeploy: error:") and err.count("\n") == 1, err
    assert "written by a job of 2 process(es)" in err
    assert tree(work / "spvit.spvit-work") == before


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

"""The serving commands from the command line: `vitdeploy serve` in a real process, stopped by a signal."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from tests.serve.conftest import free_port
from vitdeploy.cli import main

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 15
TRITON_SESSION_FILE = ".ses"
"""A fixed-name file that tritonserver itself keeps in TMPDIR across runs, not a per-run workspace."""


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (exited, parent gone, not yet reaped by init) does not count."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_line(process: subprocess.Popen, marker: str, stderr: Path) -> str:
    """Read the server's stdout until a line holds ``marker``; fail after START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    pytest.fail(f"the server did not get ready; its output:\n{''.join(seen)}\n{stderr.read_text()}")


@pytest.fixture
def short_tmp_dir():
    """A short TMPDIR: pytriton's multiprocessing managers put unix sockets there (paths ≤ 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vd-"))
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_like_onnx_runtime_then_stops_cleanly_on_a_signal(tiny_onnx, tmp_path, short_tmp_dir,
                                                                         stop_signal):
    ports = [free_port() for _ in range(3)]
    command = [sys.executable, "-m", "vitdeploy.cli", "serve", str(tiny_onnx), "--name", "vit", "--max-batch", "4",
               "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
               "--threads", "1", "--log-file", str(tmp_path / "triton.log")]
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as stderr_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr_file, text=True,
                                   env={**os.environ, "TMPDIR": str(short_tmp_dir)}, start_new_session=True)
    try:
        ready = wait_for_line(process, "SIGTERM stops", stderr)
        assert "serving vit" in ready and "images FP32 [-1, 3, 32, 32]" in ready
        images = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports[1]}") as client:
            infer_input = grpcclient.InferInput("images", list(images.shape), "FP32")
            infer_input.set_data_from_numpy(images)
            served = client.infer("vit", [infer_input]).as_numpy("logits")
        expected = ort.InferenceSession(str(tiny_onnx)).run(None, {"input": images})[0]
        assert served.shape == (3, 5) and np.isfinite(served).all()
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
        children = descendants(process.pid)
        assert children, "pytriton runs tritonserver as a child process"

        stopped_at = time.monotonic()
        process.send_signal(stop_signal)
        assert process.wait(STOP_TIMEOUT_S) == 0, stderr.read_text()
        assert time.monotonic() - stopped_at < STOP_TIMEOUT_S
    finally:
        if process.poll() is None:  # a failed test still leaves no server behind
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    time.sleep(0.5)  # let init reap any orphan before looking
    assert not [pid for pid in children if alive(pid)], "stray processes left running"
    assert [p.name for p in short_tmp_dir.iterdir() if p.name != TRITON_SESSION_FILE] == [], \
        "the Triton workspace was left behind"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, message", [
    (["loadtest", "grpc://10.0.0.7:8001", "--model", "m"], "loopback"),
    (["loadtest", "127.0.0.1:8001", "--model", "m", "--concurrency", "0"], "--concurrency"),
    (["serve", "a.onnx"], "a.onnx: no such ONNX file"),
    (["serve", "fmnist_vit", "fmnist_vit"], "give each one a --name"),
    (["serve", "fmnist_vit", "--http-port", "9000", "--grpc-port", "9000"], "three different ports"),
    (["triton-repo", "fmnist_vit", "--out", "REPO", "--preferred-batch", "0"], "--preferred-batch"),
    (["triton-repo", "fmnist_vit", "--out", "REPO", "--target", "tensorrt", "--device", "cpu"], "--device cuda"),
])
def test_user_errors_are_one_line_with_exit_code_2_and_write_nothing(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith("vitdeploy: error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_triton_repo_command_writes_the_repository(tiny_onnx, tmp_path, capsys):
    code, out, _ = run_cli(["triton-repo", str(tiny_onnx), "--out", str(tmp_path / "repo"), "--max-batch", "8",
                            "--preferred-batch", "2,4"], capsys)
    assert code == 0
    assert f"wrote {tmp_path / 'repo' / 'tiny/1/model.onnx'} (onnxruntime_onnx)" in out
    assert "max_batch_size: 8" in (tmp_path / "repo/tiny/config.pbtxt").read_text()


def test_help_shows_examples(capsys):
    for command in ("serve", "triton-repo", "loadtest"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_serve_refuses_a_port_in_use_before_building_anything(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(["serve", "fmnist_vit", "--grpc-port", str(port)], capsys)
    assert code == 2 and f"--grpc-port {port}: cannot listen on 127.0.0.1:{port}" in err


def start_server(tiny_onnx, tmp_path, short_tmp_dir) -> tuple[subprocess.Popen, list[int], Path]:
    ports = [free_port() for _ in range(3)]
    command = [sys.executable, "-m", "vitdeploy.cli", "serve", str(tiny_onnx), "--name", "vit", "--threads", "1",
               "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
               "--log-file", str(tmp_path / "triton.log")]
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as stderr_file:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr_file, text=True,
                                   env={**os.environ, "TMPDIR": str(short_tmp_dir)}, start_new_session=True)
    return process, ports, stderr


def http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def stop_and_reap(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_the_server_says_ready_only_once_its_model_is_loaded(tiny_onnx, tmp_path, short_tmp_dir):
    process, ports, stderr = start_server(tiny_onnx, tmp_path, short_tmp_dir)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while http_status(ports[0], "/v2/health/ready") != 200:
            assert time.monotonic() < deadline and process.poll() is None, stderr.read_text()
            time.sleep(0.02)
        assert http_status(ports[0], "/v2/models/vit/ready") == 200
    finally:
        stop_and_reap(process)


def test_a_signal_while_the_models_load_stops_at_once_in_one_line(tiny_onnx, tmp_path, short_tmp_dir):
    process, _, stderr = start_server(tiny_onnx, tmp_path, short_tmp_dir)
    log = tmp_path / "triton.log"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (log.is_file() and "loading: vit" in log.read_text()):
            assert time.monotonic() < deadline and process.poll() is None, stderr.read_text()
            time.sleep(0.01)
        children = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_TIMEOUT_S) == 128 + signal.SIGTERM
        assert stderr.read_text() == "vitdeploy: interrupted\n"
    finally:
        stop_and_reap(process)
    time.sleep(0.5)
    assert not [pid for pid in children if alive(pid)], "stray processes left running"
    assert not list(Path("/dev/shm").glob(f"pytrtion{process.pid}-*")), "shared memory left behind"

"""Serving the Fashion-MNIST models through Triton: load test against in-process speed.

    .venv/bin/python benchmarks/serve_fmnist.py                   # the measurement (~4 minutes)
    .venv/bin/python benchmarks/serve_fmnist.py --duration 0.5 --warmup 0.2 --iters 5 --rounds 1 \
        --out /tmp/serve-smoke                                     # a smoke run

Three models, exported through the checked exporter and served side by side on ONNX Runtime
(2 threads each) by ``vitdeploy serve`` in its own process:

- ``baseline``: the shipped fmnist_vit;
- ``nvit``: the Hessian NViT model at 0.5× FLOPs, its per-block dims from nvit-fmnist.json with
  seeded weights (speed depends on the shapes only; see nvit_speed.py);
- ``tokens``: fmnist_vit with the static token plan ``--keep 2:0.7,4:0.7``.

Steps: (1) time the same engines in this process, interleaved, at batch = each concurrency level;
(2) start the server; (3) check that each model's served logits equal the in-process engine's for a
fixed batch (finite, max abs diff ≤ 1e-5); (4) closed-loop gRPC load at each concurrency level, one
model after the other; (5) stop the server with SIGTERM. Each row's ``ratio_to_in_process`` is its
images/s ÷ the in-process engine's at batch = clients, the most a batcher could reach with that
many one-image clients. Client and server share the machine's cores.
Writes benchmarks/results/serve-fmnist-<cpu>-onnxruntime.{json,md,png,summary.md}.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from nvit_speed import compacted_specs, seeded

from vitdeploy.backends import BuildConfig, ModelSource, get_backend
from vitdeploy.hardware import cpu_name, device_slug
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.run import bench_sources
from vitdeploy.cli._options import whole_number_list
from vitdeploy.export.onnx import export_onnx
from vitdeploy.io import write_bytes_atomic
from vitdeploy.models.zoo import get_spec, load_model
from vitdeploy.serve.loadtest import MAX_CONCURRENCY, LoadPlan, parse_endpoint, run_loadtest
from vitdeploy.serve.report import load_result, markdown_report, write_load_result
from vitdeploy.tables import format_table
from vitdeploy.models.token_plan import apply_keep_plan

RESULTS = Path(__file__).parent / "results"
NVIT_LEVEL = "hessian@0.5"
KEEP_PLAN = "2:0.7,4:0.7"
THREADS = 2
MAX_BATCH = 32
PARITY_BATCH = 8
PARITY_ATOL = 1e-5
READY_MARKER = "SIGTERM stops"
START_TIMEOUT_S = 300


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=20.0, help="timed seconds per model and level")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed seconds per model and level")
    parser.add_argument("--iters", type=int, default=100, help="in-process timed runs per model and batch")
    parser.add_argument("--rounds", type=int, default=5, help="in-process interleaving rounds")
    parser.add_argument("--out", type=Path,
                        help="results stem (default: benchmarks/results/serve-fmnist-<cpu>-onnxruntime)")
    return parser.parse_args(argv)


def export_models(work_dir: Path) -> dict[str, Path]:
    """The three models as checked ONNX exports in ``work_dir``."""
    models = {"baseline": load_model("fmnist_vit"),
              "nvit": seeded(compacted_specs(get_spec("fmnist_vit"))[NVIT_LEVEL]),
              "tokens": apply_keep_plan(load_model("fmnist_vit"), KEEP_PLAN)}
    paths = {}
    for name, model in models.items():
        paths[name] = work_dir / f"{name}.onnx"
        export_onnx(model, paths[name])
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(paths: dict[str, Path], ports: dict[str, int], log_file: Path) -> subprocess.Popen:
    """``vitdeploy serve`` in its own process, so that the load generator does not share its interpreter."""
    names = [arg for name in paths for arg in ("--name", name)]
    command = [sys.executable, "-m", "vitdeploy.cli", "serve", *map(str, paths.values()), *names,
               "--backend", "onnxruntime", "--threads", str(THREADS), "--max-batch", str(MAX_BATCH),
               *(arg for key, port in ports.items() for arg in (f"--{key}-port", str(port))),
               "--log-file", str(log_file)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        print(line, end="", file=sys.stderr)
        if READY_MARKER in line:
            return server
        if not line and server.poll() is not None:
            break
    server.kill()
    raise SystemExit(f"the server did not start; see {log_file}")


def stop_server(server: subprocess.Popen) -> float:
    """SIGTERM, then the seconds until the server process has exited."""
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    server.wait(60)
    return time.monotonic() - started


def served_parity(grpc_port: int, engines: dict, shape: tuple[int, ...]) -> dict[str, float]:
    """Max |served − in-process| logits per model on one fixed batch; NaN/Inf or a shape mismatch fails."""
    import tritonclient.grpc as grpcclient

    images = np.random.default_rng(0).standard_normal((PARITY_BATCH, *shape), dtype=np.float32)
    diffs = {}
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        for name, engine in engines.items():
            infer_input = grpcclient.InferInput("images", list(images.shape), "FP32")
            infer_input.set_data_from_numpy(images)
            served = client.infer(name, [infer_input]).as_numpy("logits")
            expected = engine.infer(images)
            if served.shape != expected.shape or not (np.isfinite(served).all() and np.isfinite(expected).all()):
                raise SystemExit(f"{name}: served logits {served.shape} are not finite logits like {expected.shape}")
            diffs[name] = float(np.abs(served - expected).max())
            if diffs[name] > PARITY_ATOL:
                raise SystemExit(f"{name}: served logits differ from the in-process engine's by {diffs[name]:.2e}")
    return diffs


def with_in_process_ratio(rows: list[dict], in_process: dict[tuple[str, int], float]) -> list[dict]:
    return [{**row, "in_process_throughput": in_process[row["model"], row["concurrency"]],
             "ratio_to_in_process": row["throughput"] / in_process[row["model"], row["concurrency"]]}
            for row in rows]


def summary_table(rows: list[dict]) -> str:
    return format_table(["model", "clients", "served img/s", "in-process img/s (batch = clients)", "ratio",
                         "p50 (ms)", "p99 (ms)", "server batch"],
                        [[r["model"], r["concurrency"], f"{r['throughput']:.1f}", f"{r['in_process_throughput']:.1f}",
                          f"{r['ratio_to_in_process']:.2f}×", f"{r['median_ms']:.2f}", f"{r['p99_ms']:.2f}",
                          f"{r['mean_server_batch']:.2f}"] for r in rows])


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    levels = whole_number_list(1, MAX_CONCURRENCY, "client counts")(args.concurrency)
    out = args.out or RESULTS / f"serve-fmnist-{device_slug(cpu_name())}-onnxruntime"
    config = BuildConfig(batch_sizes=levels, threads=THREADS)
    timing = TimingPlan(warmup=10, iters=args.iters, rounds=args.rounds)
    with tempfile.TemporaryDirectory(prefix="serve-fmnist-") as tmp:
        work_dir = Path(tmp)
        paths = export_models(work_dir)
        sources = {name: ModelSource(str(path), work_dir) for name, path in paths.items()}
        bench = bench_sources(sources, "onnxruntime", config, timing)
        in_process = {(row["model"], row["batch"]): row["throughput"] for row in bench.rows}
        engines = {name: get_backend("onnxruntime").build(source, config) for name, source in sources.items()}
        ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        server = start_server(paths, ports, work_dir / "triton.log")
        try:
            parity = served_parity(ports["grpc"], engines, sources["baseline"].input_shape())
            endpoint = parse_endpoint(f"grpc://127.0.0.1:{ports['grpc']}",
                                      f"http://127.0.0.1:{ports['metrics']}/metrics")
            plan = LoadPlan(concurrency=levels, duration_s=args.duration, warmup_s=args.warmup)
            rows = run_loadtest(endpoint, list(paths), plan)
        finally:
            stop_seconds = stop_server(server)
    rows = with_in_process_ratio(rows, in_process)
    models = {"baseline": "fmnist_vit", "nvit": f"NViT {NVIT_LEVEL} dims, seeded weights", "tokens": f"--keep {KEEP_PLAN}"}
    result = load_result("fmnist_vit variants served by Triton (ONNX Runtime, CPU), closed-loop gRPC", rows, {
        "command": "python benchmarks/serve_fmnist.py " + " ".join(argv), "models": models, "threads": THREADS,
        "max_batch": MAX_BATCH, "load": vars(plan), "served_vs_in_process_max_abs_diff": parity,
        "sigterm_to_exit_seconds": stop_seconds, "in_process_timing": vars(timing)})
    write_load_result(result, out)
    summary = summary_table(rows)
    write_bytes_atomic(out.with_name(out.name + ".summary.md"), (summary + "\n").encode())
    print(markdown_report(result) + "\n" + summary)
    print(f"server stopped {stop_seconds:.1f} s after SIGTERM; wrote {out}.json/.md/.png/.summary.md", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])

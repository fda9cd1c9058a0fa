"""`vitdeploy serve`, `vitdeploy triton-repo` and `vitdeploy loadtest`: serving through Triton Inference Server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitdeploy.cli._common import MODEL_HELP, checkpoint_arguments, load_model_refs
from vitdeploy.cli._options import (
    batch_list, batch_size, float_in, non_empty, threads_count, whole_number_in, whole_number_list,
)

MODELS_HELP = MODEL_HELP + ", or an exported .onnx file"
MAX_QUEUE_DELAY_US = 60_000_000
"""A minute: Triton holds a request at most this long to fill a batch."""
MAX_INSTANCES = 256
MAX_REQUESTS = 1_000_000_000
tcp_port = whole_number_in(1, 65535)
SERVE_EXAMPLES = """examples:
  vitdeploy serve fmnist_vit
  vitdeploy serve fmnist_vit out/pruned --name base --name pruned --max-batch 16 --grpc-port 9001
  vitdeploy serve model.onnx --backend onnxruntime --max-queue-delay-us 500 --instances 2

Stop it with Ctrl-C or SIGTERM. Clients send FP32 "images" [N, C, H, W], normalised with the model's
mean/std, and get FP32 "logits" [N, classes]:
  vitdeploy loadtest grpc://127.0.0.1:8001 --model fmnist_vit
"""
REPO_EXAMPLES = """examples:
  vitdeploy triton-repo fmnist_vit out/pruned --out triton_models
  vitdeploy triton-repo fmnist_vit --out triton_models --device cuda --ort-tensorrt fp16
  vitdeploy triton-repo fmnist_vit --out triton_models --target tensorrt --device cuda
  tritonserver --model-repository triton_models
"""
LOADTEST_EXAMPLES = """examples:
  vitdeploy loadtest grpc://127.0.0.1:8001 --model fmnist_vit --concurrency 1,8,32 --duration 10
  vitdeploy loadtest http://127.0.0.1:8000 --model base --model pruned --out results/serve
"""


def register(sub) -> None:
    _add_serve(sub)
    _add_triton_repo(sub)
    _add_loadtest(sub)


def _add_batching_arguments(p: argparse.ArgumentParser, max_batch: int, delay_us: int) -> None:
    p.add_argument("--name", action="append", metavar="NAME",
                   help="Triton model name, once per MODEL in order (default: each model's own name)")
    p.add_argument("--max-batch", type=batch_size, default=max_batch,
                   help="largest batch Triton sends to a model (default: %(default)s)")
    p.add_argument("--max-queue-delay-us", type=whole_number_in(0, MAX_QUEUE_DELAY_US), default=delay_us,
                   help="how long the dynamic batcher may hold a request to fill a batch (default: %(default)s)")
    p.add_argument("--instances", type=whole_number_in(1, MAX_INSTANCES), default=1,
                   help="model instances, one engine each (default: 1)")


def _add_serve(sub) -> None:
    from vitdeploy.backends import BACKENDS
    from vitdeploy.backends import DEVICES, PRECISIONS
    from vitdeploy.serve.triton import ServeConfig

    d = ServeConfig()
    p = sub.add_parser("serve", help="serve models on a Triton Inference Server (KServe v2 over HTTP and gRPC)",
                       description="Start NVIDIA Triton Inference Server in-process (pytriton) with one Triton model "
                                   "per MODEL, each running on a vitdeploy engine, with dynamic batching and "
                                   "Prometheus metrics. Every endpoint binds 127.0.0.1 only.",
                       epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODELS_HELP)
    checkpoint_arguments(p)
    p.add_argument("--backend", choices=BACKENDS.names(), default=d.backend, help="engine (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, help="default: cuda for tensorrt, else cpu")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    p.add_argument("--threads", type=threads_count, default=d.threads,
                   help="CPU threads per engine (default: %(default)s)")
    _add_batching_arguments(p, d.max_batch, d.max_queue_delay_us)
    p.add_argument("--http-port", type=tcp_port, default=d.http_port, help="default: %(default)s")
    p.add_argument("--grpc-port", type=tcp_port, default=d.grpc_port, help="default: %(default)s")
    p.add_argument("--metrics-port", type=tcp_port, default=d.metrics_port, help="default: %(default)s")
    p.add_argument("--log-file", type=lambda text: Path(non_empty(text)),
                   help="write Triton's log there (default: stdout/stderr)")
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> None:
    from vitdeploy.serve.triton import ServeConfig, serve

    config = ServeConfig(backend=args.backend, device=args.device or _default_device(args.backend),
                         precision=args.precision, threads=args.threads, max_batch=args.max_batch,
                         max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                         http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                         log_file=args.log_file).validate()
    loaded = load_model_refs(args, args.models)
    serve(args.models, args.name, config, on_ready=lambda models: _print_ready(models, config),
          loaded=loaded)


def _default_device(backend: str) -> str:
    from vitdeploy.backends import get_backend

    return get_backend(backend, require_available=False).default_device


def _print_ready(models, config) -> None:
    from vitdeploy.serve.triton import INPUT_NAME, LOOPBACK, OUTPUT_NAME

    for model in models:
        print(f"serving {model.name} ({model.ref}) on {config.backend}: {INPUT_NAME} FP32 [-1, "
              f"{', '.join(map(str, model.input_shape))}] → {OUTPUT_NAME} FP32 [-1, {model.num_classes}]")
    print(f"gRPC {LOOPBACK}:{config.grpc_port}, HTTP {LOOPBACK}:{config.http_port}, "
          f"metrics http://{LOOPBACK}:{config.metrics_port}/metrics; Ctrl-C or SIGTERM stops", flush=True)


def _add_triton_repo(sub) -> None:
    from vitdeploy.backends import DEVICES
    from vitdeploy.serve.repository import ORT_TENSORRT_PRECISIONS, RepoConfig, served_backends

    d = RepoConfig()
    p = sub.add_parser("triton-repo", help="write a Triton model repository (config.pbtxt + ONNX or TensorRT plan)",
                       description="Write REPO/<name>/config.pbtxt and REPO/<name>/1/model.onnx (or model.plan for "
                                   "--target tensorrt) per MODEL, for a standalone Triton Inference Server. The "
                                   "config is checked against the ONNX graph; nothing is written unless all pass.",
                       epilog=REPO_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODELS_HELP)
    checkpoint_arguments(p)
    p.add_argument("--out", type=non_empty, required=True, metavar="REPO",
                   help="repository directory (new, or one this wrote)")
    p.add_argument("--target", choices=list(served_backends()), default=d.target,
                   help="onnxruntime: platform onnxruntime_onnx; tensorrt: tensorrt_plan, built here on the GPU "
                        "(default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, help="instance kind (default: cuda for tensorrt, else cpu)")
    _add_batching_arguments(p, d.max_batch, d.max_queue_delay_us)
    p.add_argument("--preferred-batch", type=batch_list, default=(),
                   help="comma-separated preferred batch sizes (default: none)")
    p.add_argument("--ort-tensorrt", choices=ORT_TENSORRT_PRECISIONS,
                   help="with --target onnxruntime on cuda: run through ONNX Runtime's TensorRT execution "
                        "accelerator at this precision")
    p.add_argument("--json", action="store_true", help="print the models written as JSON")
    p.set_defaults(run=_run_triton_repo)


def _run_triton_repo(args) -> None:
    from vitdeploy.schema import flag_name, validated
    from vitdeploy.serve.repository import RepoConfig, write_repository

    config = validated(RepoConfig(target=args.target, device=args.device or _default_device(args.target),
                                  max_batch=args.max_batch, preferred_batch=args.preferred_batch,
                                  max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                                  ort_tensorrt=args.ort_tensorrt), flag_name)
    loaded = load_model_refs(args, args.models)
    written = write_repository(args.models, args.name, config, Path(args.out), loaded)
    if args.json:
        print(json.dumps(written, indent=2))
        return
    for model in written:
        print(f"wrote {Path(args.out) / model['file']} ({model['platform']}): images {model['input']} → "
              f"logits {model['output']}")


def _add_loadtest(sub) -> None:
    from vitdeploy.serve.loadtest import MAX_CONCURRENCY, MAX_SECONDS, LoadPlan

    d = LoadPlan()
    p = sub.add_parser("loadtest", help="closed-loop load test of a Triton server on this machine",
                       description="Send closed-loop load (each client waits for its answer before the next request) "
                                   "to MODEL on a Triton server at URL, over gRPC or HTTP with tritonclient's asyncio "
                                   "clients, at each concurrency level. Reports requests/s, images/s, p50/p90/p99 "
                                   "latency, errors and the server's mean batch size (from its /metrics). Loopback "
                                   "addresses only.",
                       epilog=LOADTEST_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", metavar="URL", help="grpc://HOST:PORT, http://HOST:PORT or HOST:PORT (gRPC)")
    p.add_argument("--model", action="append", required=True, metavar="NAME",
                   help="Triton model name; repeat to test several, one after the other")
    p.add_argument("--concurrency", type=whole_number_list(1, MAX_CONCURRENCY, "client counts"), default="1,8,32",
                   help="comma-separated client counts (default: %(default)s)")
    p.add_argument("--duration", type=float_in(0, MAX_SECONDS, low_open=True), default=d.duration_s,
                   help="timed seconds per level (default: %(default)s)")
    p.add_argument("--warmup", type=float_in(0, MAX_SECONDS), default=d.warmup_s,
                   help="untimed seconds per level before timing (default: %(default)s)")
    p.add_argument("--max-requests", type=whole_number_in(1, MAX_REQUESTS), default=d.max_requests,
                   help="request cap per level (default: %(default)s)")
    p.add_argument("--batch", type=batch_size, default=d.batch, help="images per request (default: %(default)s)")
    p.add_argument("--timeout", type=float_in(0, MAX_SECONDS, low_open=True), default=d.request_timeout_s,
                   help="seconds before a request counts as failed (default: %(default)s)")
    p.add_argument("--metrics-url", type=non_empty,
                   help="the server's Prometheus metrics (default: Triton's port layout, the metrics port being the "
                        "gRPC port + 1 or the HTTP port + 2: http://HOST:8002/metrics for port 8001 or 8000)")
    p.add_argument("--out", type=non_empty, help="write OUT.json, OUT.md and OUT.png (default: print only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    p.set_defaults(run=_run_loadtest)


def _run_loadtest(args) -> None:
    from vitdeploy.io import check_output_files
    from vitdeploy.schema import validated
    from vitdeploy.serve.loadtest import LoadPlan, parse_endpoint, run_loadtest
    from vitdeploy.serve.report import load_result, markdown_report, write_load_result

    endpoint = parse_endpoint(args.url, args.metrics_url)
    if args.out is not None:
        check_output_files(*(args.out + suffix for suffix in (".json", ".md", ".png")))
    plan = validated(LoadPlan(concurrency=args.concurrency, duration_s=args.duration, max_requests=args.max_requests,
                              batch=args.batch, warmup_s=args.warmup, request_timeout_s=args.timeout), LoadPlan.flag)
    rows = run_loadtest(endpoint, args.model, plan)
    title = f"Triton load test over {endpoint.protocol} at {endpoint.address}: {', '.join(args.model)}"
    result = load_result(title, rows, {"url": args.url, "metrics_url": endpoint.metrics_url, **vars(plan)})
    if args.out:
        write_load_result(result, Path(args.out))
    print(json.dumps(result.to_dict(), indent=2) if args.json else markdown_report(result))
    if any(row["errors"] for row in rows):
        print("vitdeploy: some requests failed; see the errors column and error_samples in the JSON",
              file=sys.stderr)

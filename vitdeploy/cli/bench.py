"""`vitdeploy bench`: interleaved latency/throughput of several models on one backend."""

from __future__ import annotations

import sys
from pathlib import Path

from vitdeploy.cli._common import MODEL_HELP, checkpoint_arguments, load_model_refs, print_json_or
from vitdeploy.cli._options import batch_list, non_empty, threads_count, whole_number_in


def register(sub) -> None:
    from vitdeploy.backends import BACKENDS, DEVICES, PRECISIONS
    from vitdeploy.bench.harness import MAX_ROUNDS, MAX_RUNS, TimingPlan
    from vitdeploy.bench.run import SPARSITY_CHOICES

    d = TimingPlan()
    p = sub.add_parser("bench", help="measure latency and throughput of one or more models, interleaved",
                       description="Build every MODEL on one backend, then time them interleaved (rotating rounds in "
                                   "one process) at each batch size: median/p90/p99 latency and throughput, with "
                                   "ratios to the first model. Writes OUT.json, OUT.md and OUT.png.")
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP + ", or an exported .onnx file")
    checkpoint_arguments(p)
    p.add_argument("--backend", default="onnxruntime", help=f"{', '.join(BACKENDS.names())} (default: %(default)s)")
    p.add_argument("--batch", type=batch_list, default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--device", choices=DEVICES, help="default: cuda for tensorrt, else cpu")
    p.add_argument("--threads", type=threads_count, default=2, help="CPU threads (default: %(default)s)")
    p.add_argument("--warmup", type=whole_number_in(0, MAX_RUNS), default=d.warmup, help="untimed runs per model (default: %(default)s)")
    p.add_argument("--iters", type=whole_number_in(1, MAX_RUNS), default=d.iters, help="timed runs per model and batch (default: %(default)s)")
    p.add_argument("--rounds", type=whole_number_in(1, MAX_ROUNDS), default=d.rounds, help="interleaving rounds (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="torch backend: torch.compile")
    p.add_argument("--cuda-graphs", action="store_true", help="torch backend: replay CUDA graphs")
    p.add_argument("--sparsity", choices=SPARSITY_CHOICES, default="auto",
                   help="2:4 sparse kernels (torch cuSPARSELt, TensorRT SPARSE_WEIGHTS): auto = for models whose "
                        "spec records 2:4, on CUDA in fp16/bf16; 2:4 = for every model; none = never "
                        "(default: %(default)s)")
    p.add_argument("--out", type=non_empty, help="write OUT.json, OUT.md and OUT.png (default: print only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> None:
    import tempfile

    from vitdeploy.backends import BuildConfig, get_backend
    from vitdeploy.bench.harness import MAX_ROUNDS, MAX_RUNS, TimingPlan
    from vitdeploy.bench.report import markdown_report, write_result
    from vitdeploy.bench.run import bench_models
    from vitdeploy.io import check_output_files

    device = args.device or get_backend(args.backend, require_available=False).default_device
    config = BuildConfig(precision=args.precision, device=device, batch_sizes=args.batch,
                         threads=args.threads, compile=args.compile, cuda_graphs=args.cuda_graphs)
    if args.out:
        check_output_files(*(args.out + suffix for suffix in (".json", ".md", ".png")))
    loaded = load_model_refs(args, args.models)
    plan = TimingPlan(warmup=args.warmup, iters=args.iters, rounds=args.rounds)
    with tempfile.TemporaryDirectory() as work_dir:
        result = bench_models(args.models, args.backend, config, plan, Path(work_dir), progress=sys.stderr.isatty(),
                              sparsity=args.sparsity, loaded=loaded)
    if args.out:
        write_result(result, Path(args.out))
    print_json_or(args, result.to_dict(), markdown_report(result))

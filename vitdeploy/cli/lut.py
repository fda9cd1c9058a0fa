"""`vitdeploy lut build|show|predict|refresh`: latency lookup tables."""

from __future__ import annotations

import json
import shlex
import sys

from vitdeploy.cli._common import load_model_arg, model_arguments, print_json_or
from vitdeploy.cli._options import batch_size, threads_count


def register(sub) -> None:
    p = sub.add_parser("lut", help="latency lookup tables: build, show, predict, refresh",
                       description="Latency lookup tables hold measured latencies of block parts over a grid of "
                                   "(tokens, embed, heads×qk, heads×v, mlp) for one device, backend, precision and "
                                   "batch. Latency-aware pruning reads them; `predict` interpolates any spec.")
    lut = p.add_subparsers(dest="lut_command", required=True, metavar="ACTION")
    build = lut.add_parser("build", help="profile a grid on a backend and write the table")
    build.add_argument("--backend", default="onnxruntime", help="default: %(default)s")
    build.add_argument("--batch", type=batch_size, default=8, help="default: %(default)s")
    build.add_argument("--threads", type=threads_count, default=2, help="CPU threads (default: %(default)s)")
    build.add_argument("--precision", default="fp32", help="default: %(default)s")
    build.add_argument("--device", default="cpu", help="default: %(default)s")
    build.add_argument("--grid", default="cpu-small", help="cpu-small or quick (default: %(default)s)")
    build.add_argument("--out", default="latency_tables",
                       help="directory; the file is named DEVICE-BACKEND-PRECISION.json (default: %(default)s)")
    build.set_defaults(run=_run_lut_build)
    show = lut.add_parser("show", help="print a table's metadata and grid")
    show.add_argument("table", metavar="TABLE.json")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_run_lut_show)
    predict = lut.add_parser("predict", help="predicted latency of MODEL (with its token plan) from a table")
    predict.add_argument("table", metavar="TABLE.json")
    model_arguments(predict)
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(run=_run_lut_predict)
    refresh = lut.add_parser("refresh", help="re-measure a table in place (same grid and settings), atomically")
    refresh.add_argument("table", metavar="TABLE.json")
    refresh.set_defaults(run=_run_lut_refresh)


def _run_lut_build(args) -> None:
    from vitdeploy.backends import BuildConfig
    from vitdeploy.lut import build_table, default_grid, save_table, table_path

    config = BuildConfig(precision=args.precision, device=args.device, batch_sizes=(args.batch,),
                         threads=args.threads).validate()
    table = build_table(args.backend, config, default_grid(args.grid), device_batch=args.batch,
                        command=shlex.join(["vitdeploy", *sys.argv[1:]]),
                        progress=sys.stderr.isatty())
    path = table_path(table.metadata, args.out)
    save_table(table, path)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KB)")


def _run_lut_show(args) -> None:
    from dataclasses import asdict

    from vitdeploy.lut import load_table

    meta = asdict(load_table(args.table).metadata)
    text = "\n".join(f"{key}: {json.dumps(meta[key])}" for key in
                     ("device", "backend", "precision", "batch", "threads", "created", "build_command", "grid"))
    print_json_or(args, meta, text)


def _run_lut_predict(args) -> None:
    from vitdeploy.lut import load_table, predict
    from vitdeploy.tables import format_table

    result = predict(load_table(args.table), load_model_arg(args).spec)
    rows = [[b["block"], b["tokens"], f"{b['ms']:.3f}"] for b in result["blocks"]]
    text = (format_table(["block", "tokens in", "ms"], rows) + f"\n\npredicted total {result['total_ms']:.2f} ms "
            f"(fixed parts {result['fixed_ms']:.2f} ms)"
            + (f"; extrapolated: {', '.join(result['extrapolated'])}" if result["extrapolated"] else ""))
    print_json_or(args, result, text)


def _run_lut_refresh(args) -> None:
    from vitdeploy.lut import refresh_table

    refresh_table(args.table, progress=sys.stderr.isatty())
    print(f"refreshed {args.table}")

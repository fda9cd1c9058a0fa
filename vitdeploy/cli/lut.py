"""`vitdeploy lut build|show|predict|refresh`: latency lookup tables."""

from __future__ import annotations

import argparse
import json
import sys

from vitdeploy.cli._common import (
    MODEL_HELP, checkpoint_arguments, command_line, load_model_arg, load_model_from, model_arguments, print_json_or,
)
from vitdeploy.cli._options import batch_size, non_empty, threads_count, whole_number_in
from vitdeploy.errors import VitDeployError

DEFAULT_GRID = "cpu-small"
DEFAULT_CALIBRATION_MODELS = 8
MAX_CALIBRATION_MODELS = 256
"""Each one is a whole model exported and timed: 256 take hours already."""
MAX_ROUND_TO = 1024
BUILD_EXAMPLES = """\
examples:
  # fmnist_vit and every model NViT pruning (--round-to 8) reaches from it, calibrated on fmnist_vit and
  # 8 random pruned variants timed whole; writes latency_tables/DEVICE-onnxruntime-fp32-fmnist_vit-b64.json
  vitdeploy lut build --for fmnist_vit --batch 64 --threads 2
  vitdeploy lut build --for out/nvit --backend tensorrt --device cuda --batch 32 --calibrate 0
  # the same parts quantized as `vitdeploy quantize` writes them: the table for INT8 latency budgets
  vitdeploy lut build --for fmnist_vit --batch 64 --precision int8
  # the generic DeiT-S-sized table, latency_tables/DEVICE-onnxruntime-fp32.json
  vitdeploy lut build --grid cpu-small --batch 8
  vitdeploy lut predict latency_tables/amd-epyc-onnxruntime-fp32.json deit_small_patch16_224 --keep 4:0.7"""


def register(sub) -> None:
    from vitdeploy.backends import PRECISIONS
    from vitdeploy.quantize.config import INT8

    p = sub.add_parser("lut", help="latency lookup tables: build, show, predict, refresh",
                       description="Latency lookup tables hold measured latencies of block parts over a grid of "
                                   "(tokens, embed, heads×qk, heads×v, mlp) for one device, backend, precision and "
                                   "batch. Latency-aware pruning reads them; `predict` interpolates any spec. "
                                   "`build --for MODEL` derives the grid from MODEL and calibrates the table on it.",
                       epilog=BUILD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    lut = p.add_subparsers(dest="lut_command", required=True, metavar="ACTION")
    build = lut.add_parser("build", help="profile a grid on a backend and write the table",
                           description="Time the block parts on a grid through a backend and write the table. "
                                       "With --for MODEL the grid spans MODEL's own dims down to the smallest "
                                       "that NViT pruning reaches, and the table is calibrated on MODEL and "
                                       "random pruned variants of it, timed whole.",
                           epilog=BUILD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--backend", default="onnxruntime", help="default: %(default)s")
    build.add_argument("--batch", type=batch_size, default=8, help="default: %(default)s")
    build.add_argument("--threads", type=threads_count, default=2, help="CPU threads (default: %(default)s)")
    build.add_argument("--precision", choices=(*PRECISIONS, INT8), default="fp32",
                       help="int8: parts quantized as `vitdeploy quantize` writes them by default, the float layers "
                            "around them at the backend's precision for INT8 graphs (default: %(default)s)")
    build.add_argument("--device", default="cpu", help="default: %(default)s")
    source = build.add_mutually_exclusive_group()
    source.add_argument("--grid", type=non_empty, help=f"a fixed grid: cpu-small or quick (default: {DEFAULT_GRID})")
    source.add_argument("--for", type=non_empty, dest="for_model", metavar="MODEL",
                        help="derive the grid from MODEL and calibrate on it: " + MODEL_HELP)
    checkpoint_arguments(build)
    build.add_argument("--round-to", type=whole_number_in(1, MAX_ROUND_TO), metavar="N",
                       help="with --for: the channel multiple pruning keeps, which sets the grid's smallest widths "
                            "(default: 8, NViT's)")
    build.add_argument("--calibrate", type=whole_number_in(0, MAX_CALIBRATION_MODELS), metavar="N",
                       help=f"with --for: fit the table to MODEL and N random pruned variants timed whole; 0: no "
                            f"calibration (default: {DEFAULT_CALIBRATION_MODELS})")
    build.add_argument("--out", type=non_empty, default="latency_tables",
                       help="directory; the file is named DEVICE-BACKEND-PRECISION.json, with --for "
                            "DEVICE-BACKEND-PRECISION-MODEL-bBATCH.json (default: %(default)s)")
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
    from vitdeploy.hardware import device_name
    from vitdeploy.io import check_output_files
    from vitdeploy.lut import build_table, build_table_for, default_grid, model_table_path, save_table, table_path

    from vitdeploy.quantize.config import INT8

    _check_build_options(args)
    int8 = args.precision == INT8
    config = BuildConfig(precision="fp32" if int8 else args.precision, device=args.device, batch_sizes=(args.batch,),
                         threads=args.threads).validate()
    command, progress = command_line(), sys.stderr.isatty()
    spec = load_model_from(args, args.for_model).spec if args.for_model else None
    check_output_files(model_table_path(device_name(args.device), args.backend, args.precision, args.out,
                                        spec.name if spec else None, args.batch))  # before minutes of timing
    if spec is not None:
        calibration_models = DEFAULT_CALIBRATION_MODELS if args.calibrate is None else args.calibrate
        table = build_table_for(spec, args.backend, config, args.batch, args.round_to or 8, calibration_models,
                                progress, command, int8)
    else:
        table = build_table(args.backend, config, default_grid(args.grid or DEFAULT_GRID), device_batch=args.batch,
                            command=command, progress=progress, int8=int8)
    path = table_path(table.metadata, args.out, model=spec.name if spec else None)
    save_table(table, path)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KB)" + (f"; {_calibration_text(table.calibration)}"
                                                                   if table.calibration else ""))


def _check_build_options(args) -> None:
    """Options that only a build --for uses."""
    if args.for_model:
        return
    given = [flag for flag, value in (("--round-to", args.round_to), ("--calibrate", args.calibrate),
                                      ("--arch", args.arch), ("--model-arg", args.model_args)) if value is not None]
    if given:
        raise VitDeployError(f"{given[0]} applies only with --for MODEL (a table derived from and calibrated on MODEL)")


def _calibration_text(calibration) -> str:
    loo = "" if calibration.mape_loo_pct is None else f", leave-one-out {_percent(calibration.mape_loo_pct)}"
    fit = (f" over {calibration.models} whole models (MAPE {_percent(calibration.mape_before_pct)} → "
           f"{_percent(calibration.mape_after_pct)}{loo})" if calibration.models else " (set by hand)")
    sign = "+" if calibration.offset_ms >= 0 else "−"
    return (f"calibration: measured ≈ {calibration.scale:.4g}·predicted {sign} {abs(calibration.offset_ms):.4g} ms"
            f"{fit}")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _run_lut_show(args) -> None:
    from dataclasses import asdict

    from vitdeploy.lut import load_table

    table = load_table(args.table)
    meta = asdict(table.metadata)
    text = "\n".join(f"{key}: {json.dumps(meta[key])}" for key in
                     ("device", "backend", "precision", "batch", "threads", "created", "build_command", "grid"))
    text += "\n" + (_calibration_text(table.calibration) if table.calibration else "calibration: none")
    calibration = asdict(table.calibration) if table.calibration else None
    print_json_or(args, {**meta, "calibration": calibration}, text)


def _run_lut_predict(args) -> None:
    from vitdeploy.lut import load_table, predict
    from vitdeploy.tables import format_table

    table = load_table(args.table)
    result = predict(table, load_model_arg(args).spec)
    rows = [[b["block"], b["tokens"], b["mlp_tokens"], f"{b['ms']:.3f}"] for b in result["blocks"]]
    raw = f"; sum of parts {result['raw_ms']:.2f} ms before calibration" if table.calibration else ""
    text = (format_table(["block", "tokens in", "MLP tokens", "ms"], rows)
            + f"\n\npredicted total {result['total_ms']:.2f} ms (fixed parts {result['fixed_ms']:.2f} ms{raw})"
            + (f"; extrapolated: {', '.join(result['extrapolated'])}" if result["extrapolated"] else ""))
    print_json_or(args, result, text)


def _run_lut_refresh(args) -> None:
    from vitdeploy.lut import refresh_table

    refresh_table(args.table, progress=sys.stderr.isatty())
    print(f"refreshed {args.table}")

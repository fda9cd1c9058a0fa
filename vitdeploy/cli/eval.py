"""`vitdeploy eval`: top-1 in PyTorch and through the exported ONNX."""

from __future__ import annotations

import sys

from vitdeploy.models.spec import SELECTION_METHODS
from vitdeploy.cli._options import non_empty, positive_int
from vitdeploy.cli._common import check_onnx_files, load_model_arg, model_arguments, print_json_or
from vitdeploy.cli._runtime import add_runtime_options


def register(sub) -> None:
    p = sub.add_parser("eval", help="top-1 accuracy in PyTorch and through the exported ONNX",
                       description="Evaluate top-1 on a dataset in PyTorch and, unless --no-onnx, through an ONNX "
                                   "export run on ONNX Runtime, and report how often the two agree.")
    model_arguments(p)
    p.add_argument("--data", type=non_empty, default="fashion-mnist", help="fashion-mnist or an ImageFolder directory")
    p.add_argument("--split", default="test", help="default: %(default)s")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    p.add_argument("--resize", action="store_true", help="resize images to the model's input size")
    runtime = p.add_mutually_exclusive_group()
    runtime.add_argument("--onnx", help="evaluate this .onnx instead of exporting MODEL to a temporary file")
    runtime.add_argument("--no-onnx", action="store_true", help="PyTorch only")
    p.add_argument("--selection", choices=SELECTION_METHODS, default="topk",
                   help="token selection in the temporary ONNX export (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_runtime_options(p, training=False)
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> None:
    from vitdeploy.evaluate import EvalOptions, eval_table, evaluate_model

    check_onnx_files([args.onnx] if args.onnx else [])
    options = EvalOptions(data=args.data, split=args.split, limit=args.limit, resize=args.resize,
                          with_onnx=not args.no_onnx, onnx_path=args.onnx, selection=args.selection)
    report = evaluate_model(load_model_arg(args), options, progress=sys.stderr.isatty())
    print_json_or(args, report, eval_table(report))

"""`vitdeploy inspect`: a model's spec, parameters and MACs per block."""

from __future__ import annotations

from vitdeploy.cli._common import load_model_arg, model_arguments, print_json_or


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show a model's spec, parameters and FLOPs per block",
                       description="Show the spec, parameter count and analytic MACs (per block and total).")
    model_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_run_inspect)


def _run_inspect(args) -> None:
    from vitdeploy.report import inspect_report, inspect_table

    report = inspect_report(load_model_arg(args))
    print_json_or(args, report, inspect_table(report))

"""`vitdeploy run`: execute a pipeline recipe."""

from __future__ import annotations

import sys
from pathlib import Path

from vitdeploy.cli._common import command_line, print_json_or
from vitdeploy.cli._options import non_empty, positive_int
from vitdeploy.cli._runtime import add_runtime_options, pipeline_from


def register(sub) -> None:
    p = sub.add_parser("run", help="run a pipeline recipe (model → token plan → ONNX → checks → accuracy)",
                       description="Run a declarative pipeline recipe (JSON). Without RECIPE, runs the built-in "
                                   "default: the shipped Fashion-MNIST model with a static token plan.")
    p.add_argument("recipe", nargs="?", metavar="RECIPE", help="recipe JSON (default: export/default.json)")
    p.add_argument("--out", type=non_empty, default="out/default", help="output directory (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, help="evaluate on the first N test images only")
    p.add_argument("--json", action="store_true", help="print the JSON summary")
    add_runtime_options(p)
    p.set_defaults(run=_run_recipe)


def _run_recipe(args) -> None:
    from vitdeploy.pipeline import load_recipe, run_recipe, summary_table

    progress = sys.stderr.isatty() and not getattr(args, "quiet", False)  # quiet: a torchrun job's other processes
    summary = run_recipe(load_recipe(args.recipe), Path(args.out), limit=args.limit, progress=progress,
                         pipeline=pipeline_from(args), command=command_line())
    print_json_or(args, summary, summary_table(summary))

"""`vitdeploy prune METHOD MODEL ...`: one subcommand per registered pruning method, its options
built from the method's settings (see ``vitdeploy.prune.registry``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitdeploy.cli._common import MODEL_HELP, checkpoint_arguments, command_line, load_model_from, print_json_or
from vitdeploy.cli._options import add_config_options, config_values, non_empty, positive_int, threads_count
from vitdeploy.cli._runtime import add_runtime_options, pipeline_from
from vitdeploy.errors import VitDeployError
from vitdeploy.prune.registry import METHODS, PruneContext, PruneMethod
from vitdeploy.schema import flag_name

EXAMPLES = """\
examples:
  vitdeploy prune star fmnist_vit --target-flops 0.7 --calib fashion-mnist --eval fashion-mnist --out out/star
  vitdeploy prune cls-attn fmnist_vit --rate 0.5 --package --out out/evit
  vitdeploy prune tome fmnist_vit --r 4 --eval fashion-mnist --out out/tome4
  vitdeploy prune nvit fmnist_vit --target-flops 0.5 --round-to 16 --calib fashion-mnist --out out/nvit
  vitdeploy prune sparse24 out/nvit --calib fashion-mnist --out out/nvit24
  vitdeploy prune spvit fmnist_vit --budget-flops 0.6 --data fashion-mnist --out out/spvit"""


def register(sub) -> None:
    methods = METHODS.items()
    p = sub.add_parser("prune", help="prune a ViT: token plans, NViT structural, 2:4, SPViT selectors",
                       description="Prune MODEL with METHOD and save the result as a model directory (spec.json + "
                                   "weights.safetensors) with prune.json beside it. `vitdeploy prune METHOD --help` "
                                   "lists a method's settings.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    methods_parsers = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method in methods.values():
        _add_method(methods_parsers, method)


def _add_method(sub, method: PruneMethod) -> None:
    p = sub.add_parser(method.name, help=method.help, description=method.description)
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--out", type=non_empty, required=True, help="output model directory")
    if method.data is not None:
        p.add_argument(method.data.flag, dest="data", metavar="DATA",
                       help=method.data.help + ("" if method.data.required else " (optional)"))
    checkpoint_arguments(p)
    p.add_argument("--eval", type=non_empty, metavar="DATA",
                   help="also report top-1 before and after on DATA's test split")
    p.add_argument("--eval-limit", type=positive_int, help="evaluate on the first N test images only")
    p.add_argument("--resize", action="store_true", help="resize images to the model's input size")
    p.add_argument("--threads", type=threads_count, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print prune.json instead of a summary")
    add_config_options(p.add_argument_group(f"{method.name} settings"), method.config, method.options,
                       method.choices, method.defaults)
    add_runtime_options(p)
    p.set_defaults(run=lambda args: _run(method, args))


def _run(method: PruneMethod, args) -> None:
    from vitdeploy.io import check_output_dir
    from vitdeploy.models.checkpoint import ARTIFACT_FILES
    from vitdeploy.threads import torch_threads

    config = method.make_config(_config_values(method, args), flag_name)
    if method.data is not None and method.data.required and not args.data:
        raise VitDeployError(f"{method.name} needs {method.data.flag} DATA: {method.data.help}")
    _refuse_overwriting_input(args.model, args.out)
    check_output_dir(args.out, ARTIFACT_FILES)
    with torch_threads(args.threads):
        _prune(method, config, args)


def _prune(method: PruneMethod, config, args) -> None:
    from vitdeploy.data import dataset_for
    from vitdeploy.models.checkpoint import save_artifact

    model = load_model_from(args, args.model)
    eval_data = dataset_for(model, args.eval, "test", args.eval_limit, args.resize) if args.eval else None
    context = PruneContext(data=getattr(args, "data", None), eval_data=eval_data, out=args.out, resize=args.resize,
                           progress=not args.quiet, pipeline=pipeline_from(args))
    pruned, report = method.prune(model, config, context)
    report.update(assumed=getattr(model, "assumptions", []), model=args.model, data=context.data, eval=args.eval,
                  command=command_line())
    save_artifact(pruned, args.out, reports={"prune.json": report})
    print_json_or(args, report, method.summary(report, args.out))


def _refuse_overwriting_input(model: str, out: str) -> None:
    if Path(model).exists() and Path(out).exists() and Path(model).resolve() == Path(out).resolve():
        raise VitDeployError(f"--out {out} is the input model; give a new directory (the input and its reports "
                             "would be replaced)")


def _config_values(method: PruneMethod, args) -> dict:
    values = config_values(args, method.options)
    if "threads" in {f for f in method.config.__dataclass_fields__}:
        values["threads"] = args.threads
    return values

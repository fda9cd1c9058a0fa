"""`vitdeploy optimize MODEL --budget-ms MS --lut TABLE --out DIR`: the most accurate model within a
latency budget, measured (see ``vitdeploy.optimize``)."""

from __future__ import annotations

import argparse

from vitdeploy.cli._common import MODEL_HELP, checkpoint_arguments, load_model_from, print_json_or
from vitdeploy.cli._options import add_config_options, config_values, non_empty, threads_count
from vitdeploy.cli._runtime import add_runtime_options, pipeline_from

EXAMPLES = """\
examples:
  vitdeploy lut build --for fmnist_vit --batch 64        # once per device, backend and batch
  vitdeploy optimize fmnist_vit --budget-ms 9 --lut latency_tables/TABLE.json --out out/opt9
  vitdeploy optimize fmnist_vit --budget-ratio 0.5 --lut TABLE.json --out out/half   # half today's latency
  vitdeploy optimize fmnist_vit --budget-ms 9 --lut TABLE.json --search nvit --out out/nvit9   # structure only
  vitdeploy optimize fmnist_vit --budget-ms 9 --lut TABLE.json --search tokens --out out/t9   # STAR or Patch Slimming
  vitdeploy optimize fmnist_vit --budget-ratio 0.5 --check-ranking --out out/checked   # all fine-tuned fully
  vitdeploy optimize fmnist_vit --budget-ratio 0.5 --precisions fp32,int8 --out out/int8   # INT8 candidates too
  vitdeploy optimize fmnist_vit --budget-ratio 0.5 --tokens tome --alone tome,star --out out/merge  # token merging"""

OPTIONS = {
    "budget_ms": "latency budget in ms at the table's batch",
    "budget_ratio": "the budget as a share of the unpruned latency measured at the start, instead of --budget-ms",
    "lut": "latency table measured for this model (`vitdeploy lut build --for MODEL`); default: this machine's "
           "CPU table for MODEL at --batch in latency_tables/, built first if there is none (a few minutes)",
    "batch": "the batch the budget is for; must be the table's (default: the table's, or 64 without --lut)",
    "backend": "the backend the budget is for; must be the table's (default: the table's, or onnxruntime)",
    "precisions": "fp32, or fp32,int8 to add INT8 candidates: each measured as the Q/DQ graph `vitdeploy quantize` "
                  "writes, under its own INT8 table; an INT8 pick is written as that graph",
    "int8_lut": "with int8: the INT8 latency table (`vitdeploy lut build --for MODEL --precision int8`); default: "
                "this machine's in latency_tables/, built first if there is none",
    "max_drop": "an INT8 pick may lose at most this many test top-1 points against its float self; otherwise the "
                "next candidate is tried",
    "data": "fashion-mnist or an ImageFolder directory: train split to prune and fine-tune, test split for top-1",
    "resize": "resize the data's images to the model's input size",
    "search": "candidates: structure and tokens jointly, NViT structure only, or a token plan only",
    "tokens": "token method solved for the budget on each NViT snapshot",
    "alone": "token methods also tried alone on the unpruned structure (comma-separated; '' for none)",
    "width_step": "structural candidates every this share of the unpruned predicted latency",
    "prune_step": "NViT: predicted latency removed per pruning step, as a share of the unpruned model's",
    "step_finetune_steps": "NViT: distilled fine-tuning steps after each pruning step (prune nvit's schedule)",
    "rung_steps": "successive halving: fine-tuning steps of every candidate in the first round, doubled for the "
                  "better half in each later round",
    "finetune_steps": "distilled fine-tuning steps of the chosen candidate (token plan active), from its weights "
                      "before the race; no candidate is fine-tuned longer in the race",
    "proxy_images": "training images held out of every fine-tune to rank the candidates on",
    "check_ranking": "also fine-tune every candidate fully and report its test top-1 and the proxy's rank "
                     "correlation with it (slow)",
    "calib_size": "calibration images of the token method",
    "round_to": "NViT keeps every dim a multiple of this",
    "lr": "fine-tuning peak learning rate",
    "batch_size": "fine-tuning batch",
    "eval_limit": "evaluate on the first N test images only",
    "seed": "sampling and fine-tuning order",
}


def register(sub) -> None:
    from vitdeploy.optimize import SEARCHES, OptimizeConfig

    p = sub.add_parser(
        "optimize", help="the most accurate model within a latency budget: NViT × token plans, measured",
        description="Search structural widths (NViT) and token plans (STAR, Patch Slimming, keep rates) for the "
                    "most accurate model that measures within --budget-ms. Candidates are made with a measured "
                    "latency table and each is timed (and remade if over budget); NViT alone and each token method "
                    "alone are candidates too. Successive halving ranks them after equal distilled fine-tuning; the "
                    "best gets the full fine-tune, is exported with every check and measured again (the next one "
                    "down is tried if it is more than 3 %% over). Writes DIR/model, DIR/model.onnx and "
                    "DIR/optimize.json (every candidate, round and attempt; predicted vs measured latency; top-1). "
                    "With --precisions fp32,int8, INT8 candidates join the race, each measured as a Q/DQ graph "
                    "under an INT8 table; an INT8 pick is quantized on the training data, checked on the test "
                    "split (--max-drop) and written as DIR/model.onnx with DIR/model.quantize.json.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--out", type=non_empty, required=True,
                   help="output directory (replaced only when the run succeeds)")
    checkpoint_arguments(p)
    p.add_argument("--threads", type=threads_count, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print optimize.json instead of a summary")
    group = p.add_argument_group("search settings")
    add_config_options(group, OptimizeConfig, OPTIONS, choices={"search": SEARCHES})
    add_runtime_options(p)
    p.set_defaults(run=_run)


def _run(args) -> None:
    from vitdeploy.optimize import OptimizeConfig, optimize, summary_table
    from vitdeploy.schema import flag_name, validated

    values = config_values(args, OPTIONS)
    config = validated(OptimizeConfig(**values, threads=args.threads), flag_name)
    model = load_model_from(args, args.model)
    result = optimize(model, config, args.out, progress=not args.quiet, pipeline=pipeline_from(args))
    print_json_or(args, result, summary_table(result) + f"\nsaved {args.out}")

"""The ``vitdeploy`` command line: thin subcommands over the library functions.

User errors (``VitDeployError``) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import SELECTION_METHODS

MODEL_HELP = ("a vitdeploy model directory (spec.json + weights.safetensors), a timm/DeiT checkpoint "
              "(.pth/.safetensors), or a registered name such as fmnist_vit or deit_small_patch16_224 "
              "(names without shipped weights get a seeded random init, fine for export and speed tests)")
KEEP_HELP = ("static token plan (replaces any plan stored with MODEL): comma-separated BLOCK:KEEP pairs, blocks "
             "numbered from 1; KEEP is a whole patch-token count (e.g. 137) or a rate strictly between 0 and 1 "
             "of the patch tokens entering that block (e.g. 0.7). Tokens are ranked by the class token's "
             "attention. Example: --keep 4:0.7,7:0.7,10:0.7 drops 30%% of the patch tokens after blocks 4, 7, 10")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except VitDeployError as exc:
        print(f"vitdeploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vitdeploy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitdeploy",
        description="Prune, export and check Vision Transformers for TensorRT, ONNX Runtime and PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inspect(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_prune(sub)
    _add_export(sub)
    _add_rewrite(sub)
    _add_bench(sub)
    _add_lut(sub)
    _add_run(sub)
    return parser


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--arch", help="registered architecture of a timm checkpoint, which also sets its input "
                                  "normalisation (default: inferred from the shapes, with ImageNet mean/std)")
    p.add_argument("--keep", help=KEEP_HELP)
    p.add_argument("--package", action="store_true",
                   help="fold the dropped tokens of every --keep step into a package token (SPViT)")


def _load(args):
    from vitdeploy.models.checkpoint import CHECKPOINT_SUFFIXES
    from vitdeploy.models.zoo import load_model
    from vitdeploy.tokens.plan import apply_keep_plan

    if args.package and not args.keep:
        raise VitDeployError("--package needs --keep (the token steps whose dropped tokens it packages)")
    if args.arch and not args.model.endswith(CHECKPOINT_SUFFIXES):
        raise VitDeployError("--arch applies only to checkpoint files (.pth/.safetensors)")
    model = load_model(args.model, args.arch)
    if args.keep:
        model = apply_keep_plan(model, args.keep, package=args.package)
    return model


def _print_json_or(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=2) if getattr(args, "json", False) else text)


# --- inspect ---------------------------------------------------------------------------------

def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show a model's spec, parameters and FLOPs per block",
                       description="Show the spec, parameter count and analytic MACs (per block and total).")
    _model_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_run_inspect)


def _run_inspect(args) -> None:
    from vitdeploy.report import inspect_report, inspect_table

    report = inspect_report(_load(args))
    _print_json_or(args, report, inspect_table(report))


# --- train -----------------------------------------------------------------------------------

def _add_train(sub) -> None:
    from vitdeploy.train.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a ViT from scratch (default: the Fashion-MNIST reference model)",
                       description="Train a registered architecture from scratch and save it as a vitdeploy model "
                                   "directory, with train.json (config and per-epoch accuracy) beside it.")
    p.add_argument("--model", default=d.model, help="registered architecture (default: %(default)s)")
    p.add_argument("--data", default=d.data, help="fashion-mnist or an ImageFolder directory (default: %(default)s)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="default: %(default)s")
    p.add_argument("--crop-padding", type=int, default=d.crop_padding,
                   help="random-shift augmentation in pixels, 0 = off; flips are always on (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--limit", type=int, help="use only the first N images of each split (quick runs)")
    p.add_argument("--init", metavar="MODEL_DIR",
                   help="start from this model directory's weights (fine-tuning) instead of a random init")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(run=_run_train)


def _run_train(args) -> None:
    from vitdeploy.models.checkpoint import load_artifact, save_artifact
    from vitdeploy.models.vit import ViT
    from vitdeploy.models.zoo import get_spec
    from vitdeploy.train.config import TrainConfig
    from vitdeploy.train.loop import train

    config = TrainConfig(model=args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, label_smoothing=args.label_smoothing, crop_padding=args.crop_padding,
                         seed=args.seed, threads=args.threads, limit=args.limit, init=args.init).validate()
    if args.init:
        model = load_artifact(args.init)
        if model.spec != get_spec(args.model):
            raise VitDeployError(f"--init {args.init} is not a {args.model} model; pass --model with its architecture")
    else:
        model = ViT(get_spec(args.model))
        model.reset_parameters(args.seed)
    report = train(model, config, progress=not args.quiet)
    report["command"] = config.command(args.out)
    save_artifact(model, args.out, reports={"train.json": report})
    print(f"saved {args.out}: test top-1 {report['test_top1']:.4f} after {config.epochs} epochs "
          f"({report['train_seconds']:.0f} s)")


# --- prune -----------------------------------------------------------------------------------

STRUCTURAL_METHODS = ("nvit", "sparse24")
LEARNED_METHODS = ("spvit",)
PRUNE_DESCRIPTION = """\
Prune MODEL and save the result as a model directory (spec.json + weights.safetensors) with
prune.json beside it: per-block token counts, FLOPs, calibration time and, with --eval, top-1.

Token methods (no fine-tuning; the weights are unchanged, the spec gets a static token plan):
  patch-slimming  top-down fixed-position pyramid (Tang et al.); exports as constant Gathers
  star            class attention fused with offline relevance (gradient x attention rollout)
                  per patch position, ACS-derived keep rates (Zhang et al.)
  a-star          STAR with input-dependent counts: PyTorch evaluation only, never exported
  uniform         the same class-attention keep rate after every block but the last
  cls-attn        EViT-style class-attention top-k at a few blocks (--blocks, --package)
  random          the uniform schedule with random fixed positions
Give --target-flops (a ratio of the unpruned model's FLOPs) or the method's own knob
(--rho, --epsilon, --rate or --keep).

Structural methods (the weights change; --calib is the training data they fine-tune on):
  nvit            NViT global structural pruning (Yang et al.): embed dim, heads, per-head QK/V
                  dims and MLP neurons ranked by Hessian-aware importance minus a latency (or
                  FLOPs) term, removed a few at a time with short distilled fine-tunes, then
                  compacted into a smaller dense model; --target-flops or --target-latency-ms
  sparse24        2:4 magnitude sparsity on every block Linear (dims must be multiples of 16:
                  prune with nvit --round-to 16 first), optionally fine-tuned with the zeros kept

Learned token selectors (trained on --data; checkpoints in OUT.spvit-work/, resumed if found):
  spvit           SPViT (Kong et al.): multi-head token selectors after --selectors, a package
                  token, a computation-aware loss for --budget-flops. Training decides per
                  image (Gumbel-softmax); the saved model and its export keep a static
                  k = round(rho_i x N) tokens per phase (top-k, no sort), so the per-image
                  adaptive count exists only in training and PyTorch evaluation."""


def _add_prune(sub) -> None:
    from vitdeploy.prune.nvit_config import CRITERIA, NViTConfig
    from vitdeploy.prune.token_config import TOKEN_METHODS, TokenPruneConfig

    d, n = TokenPruneConfig(method="star"), NViTConfig()
    p = sub.add_parser("prune", help="prune a ViT: token plans (Patch Slimming, STAR, baselines), NViT, 2:4",
                       description=PRUNE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--arch", help="registered architecture of a timm checkpoint")
    p.add_argument("--method", required=True, choices=(*TOKEN_METHODS, *STRUCTURAL_METHODS, *LEARNED_METHODS),
                   help="pruning method (see above)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--target-flops", type=float,
                   help="target FLOPs as a ratio of the unpruned model's, in (0, 1): the method's knob is bisected")
    p.add_argument("--calib", metavar="DATA", help="calibration / fine-tuning data (its train split): fashion-mnist "
                                                    "or an ImageFolder directory; needed by patch-slimming, star, "
                                                    "a-star and nvit")
    p.add_argument("--calib-size", type=int, default=d.calib_size,
                   help="calibration images drawn (seeded) from the train split (default: %(default)s)")
    p.add_argument("--eval", metavar="DATA", help="also report top-1 before and after on DATA's test split")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--resize", action="store_true", help="resize images to the model's input size")
    p.add_argument("--seed", type=int, default=d.seed, help="calibration sampling and random plans (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print prune.json instead of a summary")
    star = p.add_argument_group("star / a-star")
    star.add_argument("--rho", type=float, help="keep rate of the last block, in (0, 1]; lower prunes more")
    star.add_argument("--alpha", type=float, default=d.alpha,
                      help="fusion weight of the online class attention, in [0, 1] (default: %(default)s)")
    star.add_argument("--gamma", type=int, default=d.gamma,
                      help="top classes per image in the inter-layer scores (default: %(default)s)")
    star.add_argument("--rounds", type=int, default=d.rounds, help="calibration rounds T (default: %(default)s)")
    star.add_argument("--calib-batch", type=int, default=d.calib_batch,
                      help="images per calibration round (default: %(default)s)")
    slim = p.add_argument_group("patch-slimming")
    slim.add_argument("--epsilon", type=float,
                      help="tolerated relative error of the class token's final features; higher prunes more")
    slim.add_argument("--granularity", type=int, default=d.granularity,
                      help="patches added per greedy step, r' (default: %(default)s)")
    base = p.add_argument_group("uniform / cls-attn / random")
    base.add_argument("--rate", type=float, help="share of the patch tokens kept at each step, in (0, 1)")
    base.add_argument("--keep", help="explicit plan instead of --rate: " + KEEP_HELP.split(": ", 1)[1])
    base.add_argument("--blocks", help="cls-attn: blocks (from 1) after which tokens drop (default: after ¼, ½, ¾ of the depth, "
                           "e.g. 3,6,9 of 12)")
    base.add_argument("--package", action="store_true", help="cls-attn: fold dropped tokens into a package token")
    nvit = p.add_argument_group("nvit / sparse24")
    nvit.add_argument("--target-latency-ms", type=float, help="nvit: target predicted latency (needs --lut)")
    nvit.add_argument("--lut", help="nvit: latency table for the latency term (default: FLOPs stand in)")
    nvit.add_argument("--criterion", choices=CRITERIA, default=n.criterion, help="nvit (default: %(default)s)")
    nvit.add_argument("--eta", type=float, default=n.eta, help="nvit: weight of the latency term (default: %(default)s)")
    nvit.add_argument("--temperature", type=float, default=n.temperature,
                      help="distillation temperature of the KL term to the unpruned model (default: %(default)s)")
    nvit.add_argument("--prune-step", type=float, default=n.prune_step,
                      help="nvit: cost removed per pruning step, as a share of the original (default: %(default)s)")
    nvit.add_argument("--calib-batches", type=int, default=n.calib_batches,
                      help="nvit: batches per importance estimate (default: %(default)s)")
    nvit.add_argument("--batch-size", type=int, default=n.batch_size, help="fine-tuning batch (default: %(default)s)")
    nvit.add_argument("--finetune-steps", type=int, default=n.finetune_steps,
                      help="fine-tuning steps after each nvit step, or in all for sparse24 (default: %(default)s)")
    nvit.add_argument("--final-finetune-steps", type=int, default=n.final_finetune_steps,
                      help="nvit: fine-tuning steps at the end (default: %(default)s)")
    nvit.add_argument("--lr", type=float, default=n.lr, help="fine-tuning peak learning rate (default: %(default)s)")
    nvit.add_argument("--round-to", type=int, default=n.round_to,
                      help="nvit: keep every dim a multiple of this; 16 if sparse24 follows (default: %(default)s)")
    _spvit_arguments(p.add_argument_group("spvit"))
    p.set_defaults(run=_run_prune)


def _spvit_arguments(group) -> None:
    from vitdeploy.prune.spvit_config import SPViTConfig

    d = SPViTConfig()
    group.add_argument("--data", metavar="DATA", help="spvit: training data (its train split)")
    group.add_argument("--budget-flops", type=float, default=d.budget_flops,
                       help="spvit: FLOPs budget as a ratio of the unpruned model's, in (0, 1] (default: %(default)s)")
    group.add_argument("--selectors", help="spvit: blocks (from 1) followed by a selector (default: after ¼, ½, ¾ "
                                           "of the depth, e.g. 3,6,9 of 12)")
    group.add_argument("--epochs", type=int, default=d.epochs, help="spvit (default: %(default)s)")
    group.add_argument("--lr-selector", type=float, default=d.lr_selector, help="spvit (default: %(default)s)")
    group.add_argument("--lr-backbone", type=float, default=d.lr_backbone, help="spvit (default: %(default)s)")
    group.add_argument("--lambda-ratio", type=float, default=d.lambda_ratio,
                       help="spvit: weight of the keep-ratio loss; raise it (e.g. 10) when a short run overshoots "
                            "its keep targets (default: %(default)s, the paper's)")
    group.add_argument("--no-package", action="store_true", help="spvit: drop tokens without a package token")
    group.add_argument("--package-mode", choices=("add", "concat"), default=d.package_mode,
                       help="spvit: add each phase's package token to the previous one, or keep both "
                            "(default: %(default)s)")
    group.add_argument("--selector-heads", type=int, help="spvit: selector heads (default: the block's)")
    group.add_argument("--limit", type=int, help="spvit: train on the first N images only")
    group.add_argument("--val-size", type=int, default=5000,
                       help="spvit: hold out the last N train images to choose the best epoch; --eval DATA also "
                            "reports the test split's top-1 (default: %(default)s)")
    group.add_argument("--no-resume", action="store_true", help="spvit: start afresh even if a checkpoint exists")


def _run_prune(args) -> None:
    import torch

    from vitdeploy.evaluate import dataset_for
    from vitdeploy.models.checkpoint import save_artifact
    from vitdeploy.models.zoo import load_model

    if args.threads < 1:
        raise VitDeployError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.arch)
    eval_data = dataset_for(model, args.eval, "test", args.eval_limit, args.resize) if args.eval else None
    prune = {"nvit": _prune_nvit, "sparse24": _prune_sparse24, "spvit": _prune_spvit}.get(args.method, _prune_tokens)
    pruned, report, summary = prune(args, model, eval_data)
    report.update(model=args.model, calib=args.calib, eval=args.eval, command=" ".join(["vitdeploy", *sys.argv[1:]]))
    save_artifact(pruned, args.out, reports={"prune.json": report})
    _print_json_or(args, report, summary(report, args.out))


def _prune_tokens(args, model, eval_data):
    from vitdeploy.prune.calibrate import calibration_images
    from vitdeploy.prune.token_config import TokenPruneConfig
    from vitdeploy.prune.token_methods import prune_tokens
    from vitdeploy.report import prune_summary

    config = TokenPruneConfig(
        method=args.method, target_flops=args.target_flops, rho=args.rho, alpha=args.alpha, gamma=args.gamma,
        rounds=args.rounds, epsilon=args.epsilon, granularity=args.granularity, rate=args.rate, keep=args.keep,
        blocks=args.blocks, package=args.package, calib_size=args.calib_size, calib_batch=args.calib_batch,
        seed=args.seed).validate()
    images = calibration_images(model, args.calib, args.calib_size, args.seed, args.resize) if args.calib else None
    return (*prune_tokens(model, config, images, eval_data, progress=not args.quiet), prune_summary)


def _nvit_config(args):
    from vitdeploy.prune.nvit_config import NViTConfig

    return NViTConfig(
        target_flops=args.target_flops, target_latency_ms=args.target_latency_ms, lut=args.lut, criterion=args.criterion,
        eta=args.eta, temperature=args.temperature, prune_step=args.prune_step, calib_batches=args.calib_batches,
        batch_size=args.batch_size, finetune_steps=args.finetune_steps, final_finetune_steps=args.final_finetune_steps,
        lr=args.lr, round_to=args.round_to, seed=args.seed, threads=args.threads).validate()


def _prune_nvit(args, model, eval_data):
    from vitdeploy.evaluate import dataset_for
    from vitdeploy.prune.structural import prune_nvit
    from vitdeploy.report import nvit_summary

    config = _nvit_config(args)
    if args.target_latency_ms is not None and not args.lut:
        raise VitDeployError("--target-latency-ms needs --lut FILE (a latency table for the target device)")
    if not args.calib:
        raise VitDeployError("--method nvit fine-tunes between pruning steps: give --calib DATA (its train split)")
    train_data = dataset_for(model, args.calib, "train", resize=args.resize)
    return (*prune_nvit(model, config, train_data, eval_data, progress=not args.quiet), nvit_summary)


def _prune_spvit(args, model, eval_data):
    from vitdeploy.data import holdout_split
    from vitdeploy.evaluate import dataset_for, evaluate
    from vitdeploy.prune.spvit import prune_spvit
    from vitdeploy.prune.spvit_config import SPViTConfig, parse_selectors
    from vitdeploy.report import spvit_summary

    config = SPViTConfig(
        budget_flops=args.budget_flops, selectors=parse_selectors(args.selectors) if args.selectors else None,
        epochs=args.epochs, batch_size=args.batch_size, lr_selector=args.lr_selector, lr_backbone=args.lr_backbone,
        lambda_ratio=args.lambda_ratio,
        package=not args.no_package, package_mode=args.package_mode, selector_heads=args.selector_heads,
        limit=args.limit, seed=args.seed, threads=args.threads, resume=not args.no_resume).validate(model.spec.depth)
    if not args.data:
        raise VitDeployError("--method spvit trains its selectors: give --data DATA (its train split)")
    train_data, validation = holdout_split(dataset_for(model, args.data, "train", resize=args.resize), args.val_size)
    pruned, report = prune_spvit(model, config, train_data, validation, f"{args.out}.spvit-work",
                                 progress=not args.quiet)
    report["validation"] = f"the last {args.val_size} images of {args.data}'s train split (held out from training)"
    if eval_data is not None:
        report["test_top1"] = evaluate(pruned, eval_data)
    return pruned, report, spvit_summary


def _prune_sparse24(args, model, eval_data):
    from vitdeploy.evaluate import dataset_for
    from vitdeploy.prune.nvit_config import NViTConfig
    from vitdeploy.prune.sparsity import sparsify_and_fine_tune
    from vitdeploy.report import sparse24_summary

    train_data = dataset_for(model, args.calib, "train", resize=args.resize) if args.calib else None
    config = NViTConfig(batch_size=args.batch_size, lr=args.lr, temperature=args.temperature, seed=args.seed,
                        threads=args.threads).train_config()
    pruned, report = sparsify_and_fine_tune(model, train_data, args.finetune_steps if args.calib else 0, config,
                                            eval_data, progress=not args.quiet)
    return pruned, report, sparse24_summary


# --- eval ------------------------------------------------------------------------------------

def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="top-1 accuracy in PyTorch and through the exported ONNX",
                       description="Evaluate top-1 on a dataset in PyTorch and, unless --no-onnx, through an ONNX "
                                   "export run on ONNX Runtime, and report how often the two agree.")
    _model_arguments(p)
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an ImageFolder directory")
    p.add_argument("--split", default="test", help="default: %(default)s")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--resize", action="store_true", help="resize images to the model's input size")
    runtime = p.add_mutually_exclusive_group()
    runtime.add_argument("--onnx", help="evaluate this .onnx instead of exporting MODEL to a temporary file")
    runtime.add_argument("--no-onnx", action="store_true", help="PyTorch only")
    p.add_argument("--selection", choices=SELECTION_METHODS, default="topk",
                   help="token selection in the temporary ONNX export (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> None:
    from vitdeploy.evaluate import EvalOptions, eval_table, evaluate_model

    options = EvalOptions(data=args.data, split=args.split, limit=args.limit, resize=args.resize,
                          with_onnx=not args.no_onnx, onnx_path=args.onnx, selection=args.selection)
    report = evaluate_model(_load(args), options, progress=sys.stderr.isatty())
    _print_json_or(args, report, eval_table(report))


# --- export ----------------------------------------------------------------------------------

def _add_export(sub) -> None:
    from vitdeploy.export.config import MAX_OPSET, MIN_OPSET, TARGETS, ExportConfig

    d = ExportConfig()
    p = sub.add_parser("export", help="export to ONNX (static token counts, dynamic batch) and check it",
                       description="Export MODEL to ONNX with a dynamic batch axis and static per-layer token counts, "
                                   "then run the ONNX checker (full), the op audit (no sort, target allowlist) and an "
                                   "ONNX Runtime parity check. The .onnx and OUT.export.json are written only if all pass.")
    _model_arguments(p)
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--selection", choices=SELECTION_METHODS, default=d.selection,
                   help="topk: TopK with a static k; rank: sort-free (comparisons + one-hot MatMul), no TopK at all")
    p.add_argument("--target", choices=TARGETS, default=d.target,
                   help="whose operator allowlist the audit enforces (default: %(default)s)")
    p.add_argument("--opset", type=int, default=d.opset,
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: %(default)s)")
    p.add_argument("--as-static-star", action="store_true",
                   help="for an a-STAR model (input-dependent token counts, not exportable): export its static STAR "
                        "plan instead, which keeps a fixed upper-bound count per layer")
    p.add_argument("--parity-data", metavar="DATA",
                   help="check parity on DATA's first test images (fashion-mnist or an ImageFolder directory) "
                        "instead of random noise: learned token scores can nearly tie on noise")
    p.add_argument("--resize", action="store_true", help="resize --parity-data images to the model's input size")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a summary")
    p.set_defaults(run=_run_export)


def _run_export(args) -> None:
    from vitdeploy.export.onnx import ExportConfig, export_onnx, report_path
    from vitdeploy.report import export_summary

    if not args.out.endswith(".onnx"):
        raise VitDeployError(f"--out {args.out}: the output file name must end in .onnx")
    config = ExportConfig(opset=args.opset, selection=args.selection, target=args.target,
                          parity_data=args.parity_data, parity_resize=args.resize)
    model = _load(args)
    if args.as_static_star:
        model = _static_star(model)
    report = export_onnx(model, args.out, config)
    _print_json_or(args, report.to_dict(), export_summary(report.to_dict(), report_path(args.out)))


def _static_star(model):
    from vitdeploy.tokens.plan import with_spec

    if not model.spec.adaptive:
        raise VitDeployError("--as-static-star applies only to a-STAR models (this one keeps static token counts)")
    return with_spec(model, model.spec.static_counterpart())


# --- rewrite ---------------------------------------------------------------------------------

def _add_rewrite(sub) -> None:
    from vitdeploy.export.config import TARGETS

    p = sub.add_parser("rewrite", help="fix an ONNX graph from elsewhere: argsort+slice → TopK(k), fold constants",
                       description="Rewrite an ONNX graph exported by another token-pruning codebase: a full-length "
                                   "TopK (argsort) whose indices are sliced to the first k becomes TopK(k); constants "
                                   "are folded. The op audit and an ONNX Runtime before/after parity check follow.")
    p.add_argument("input", metavar="IN.onnx")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--target", choices=TARGETS, default="onnxruntime",
                   help="whose operator allowlist the audit enforces (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.set_defaults(run=_run_rewrite)


def _run_rewrite(args) -> None:
    from vitdeploy.export.rewrite import rewrite_onnx

    report = rewrite_onnx(args.input, args.out, target=args.target).to_dict()
    audit = "passed" if report["audit"]["passed"] else "FAILED: " + "; ".join(report["audit"]["violations"])
    _print_json_or(args, report, f"wrote {args.out}: {len(report['applied'])} argsort pattern(s) rewritten, "
                                 f"audit {audit}")


# --- bench -----------------------------------------------------------------------------------

def _add_bench(sub) -> None:
    from vitdeploy.backends.base import DEVICES, PRECISIONS
    from vitdeploy.bench.harness import TimingPlan

    d = TimingPlan()
    p = sub.add_parser("bench", help="measure latency and throughput of one or more models, interleaved",
                       description="Build every MODEL on one backend, then time them interleaved (rotating rounds in "
                                   "one process) at each batch size: median/p90/p99 latency and throughput, with "
                                   "ratios to the first model. Writes OUT.json, OUT.md and OUT.png.")
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP + ", or an exported .onnx file")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime, torch or tensorrt (default: %(default)s)")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--device", choices=DEVICES, help="default: cuda for tensorrt, else cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed runs per model (default: %(default)s)")
    p.add_argument("--iters", type=int, default=d.iters, help="timed runs per model and batch (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="interleaving rounds (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="torch backend: torch.compile")
    p.add_argument("--cuda-graphs", action="store_true", help="torch backend: replay CUDA graphs")
    p.add_argument("--out", help="write OUT.json, OUT.md and OUT.png (default: print only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> None:
    import tempfile

    from vitdeploy.backends import BuildConfig
    from vitdeploy.bench.harness import TimingPlan
    from vitdeploy.bench.report import markdown_report, write_result
    from vitdeploy.bench.run import bench_models, parse_batches

    device = args.device or ("cuda" if args.backend == "tensorrt" else "cpu")
    config = BuildConfig(precision=args.precision, device=device, batch_sizes=parse_batches(args.batch),
                         threads=args.threads, compile=args.compile, cuda_graphs=args.cuda_graphs)
    plan = TimingPlan(warmup=args.warmup, iters=args.iters, rounds=args.rounds)
    with tempfile.TemporaryDirectory() as work_dir:
        result = bench_models(args.models, args.backend, config, plan, Path(work_dir), progress=sys.stderr.isatty())
    if args.out:
        write_result(result, Path(args.out))
    _print_json_or(args, result.to_dict(), markdown_report(result))


# --- lut ---------------------------------------------------------------------------------------

def _add_lut(sub) -> None:
    p = sub.add_parser("lut", help="latency lookup tables: build, show, predict, refresh",
                       description="Latency lookup tables hold measured latencies of block parts over a grid of "
                                   "(tokens, embed, heads×qk, heads×v, mlp) for one device, backend, precision and "
                                   "batch. Latency-aware pruning reads them; `predict` interpolates any spec.")
    lut = p.add_subparsers(dest="lut_command", required=True, metavar="ACTION")
    build = lut.add_parser("build", help="profile a grid on a backend and write the table")
    build.add_argument("--backend", default="onnxruntime", help="default: %(default)s")
    build.add_argument("--batch", type=int, default=8, help="default: %(default)s")
    build.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
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
    _model_arguments(predict)
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
    _print_json_or(args, meta, text)


def _run_lut_predict(args) -> None:
    from vitdeploy.lut import load_table, predict
    from vitdeploy.report import format_table

    result = predict(load_table(args.table), _load(args).spec)
    rows = [[b["block"], b["tokens"], f"{b['ms']:.3f}"] for b in result["blocks"]]
    text = (format_table(["block", "tokens in", "ms"], rows) + f"\n\npredicted total {result['total_ms']:.2f} ms "
            f"(fixed parts {result['fixed_ms']:.2f} ms)"
            + (f"; extrapolated: {', '.join(result['extrapolated'])}" if result["extrapolated"] else ""))
    _print_json_or(args, result, text)


def _run_lut_refresh(args) -> None:
    from vitdeploy.lut import refresh_table

    refresh_table(args.table, progress=sys.stderr.isatty())
    print(f"refreshed {args.table}")


# --- run (pipeline recipes) -------------------------------------------------------------------

def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a pipeline recipe (model → token plan → ONNX → checks → accuracy)",
                       description="Run a declarative pipeline recipe (JSON). Without RECIPE, runs the built-in "
                                   "default: the shipped Fashion-MNIST model with a static token plan.")
    p.add_argument("recipe", nargs="?", metavar="RECIPE", help="recipe JSON (default: export/default.json)")
    p.add_argument("--out", default="out/default", help="output directory (default: %(default)s)")
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--json", action="store_true", help="print the JSON summary")
    p.set_defaults(run=_run_recipe)


def _run_recipe(args) -> None:
    from vitdeploy.pipeline import load_recipe, run_recipe, summary_table

    summary = run_recipe(load_recipe(args.recipe), Path(args.out), limit=args.limit,
                         progress=sys.stderr.isatty())
    _print_json_or(args, summary, summary_table(summary))


if __name__ == "__main__":
    sys.exit(main())

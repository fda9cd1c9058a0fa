"""What several commands share: the MODEL argument, loading it, and printing JSON or text."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from vitdeploy.errors import VitDeployError

MODEL_HELP = ("a vitdeploy model directory (spec.json + weights.safetensors), a Hugging Face ViT/DeiT directory "
              "(config.json + model.safetensors), a timm/DeiT checkpoint (.pth/.pth.tar/.safetensors, with a timm "
              "config.json beside it if there is one, or a timm hub directory), or a registered "
              "name such as fmnist_vit or deit_small_patch16_224 (names without shipped weights get a seeded "
              "random init, fine for export and speed tests)")
KEEP_HELP = ("static token plan (replaces any plan stored with MODEL): comma-separated BLOCK:KEEP pairs, blocks "
             "numbered from 1; KEEP is a whole patch-token count (e.g. 137) or a rate strictly between 0 and 1 "
             "of the patch tokens entering that block (e.g. 0.7). Tokens are ranked by the class token's "
             "attention. Example: --keep 4:0.7,7:0.7,10:0.7 drops 30%% of the patch tokens after blocks 4, 7, 10")
ARCH_HELP = ("registered architecture of a timm checkpoint, which also sets its input normalisation (default: "
             "read from the checkpoint's config, else inferred from the shapes)")
MODEL_ARG_HELP = ("a timm model argument of a checkpoint, overriding its config (repeatable): e.g. num_heads=6, "
                  "mean=[0.5,0.5,0.5], std=[0.5,0.5,0.5]; settings vitdeploy's ViT does not implement are refused")


def model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    checkpoint_arguments(p)
    p.add_argument("--keep", type=ascii_text, help=KEEP_HELP)
    p.add_argument("--package", action="store_true",
                   help="fold the dropped tokens of every --keep step into a package token (SPViT)")


def checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help=ARCH_HELP)
    p.add_argument("--model-arg", dest="model_args", action="append", type=model_arg, metavar="KEY=VALUE",
                   help=MODEL_ARG_HELP)
    p.add_argument("--strict", action="store_true",
                   help="refuse a checkpoint whose architecture would need anything assumed (heads, pooling, "
                        "activation, normalisation) instead of noting it")


def command_line() -> str:
    """This process's command line, as a user would type it, for reports."""
    return shlex.join(["vitdeploy", *sys.argv[1:]])


def ascii_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a value")
    if not text.isascii():
        raise argparse.ArgumentTypeError(f"{text!r} holds non-ASCII characters")
    return text


def model_arg(text: str) -> tuple[str, object]:
    """'num_heads=6' → ('num_heads', 6); the value is read as JSON, else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. num_heads=6)")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def load_model_from(args, ref: str):
    """The model ``ref`` with the checkpoint options of ``args``; what was assumed becomes a note."""
    from vitdeploy.models.zoo import load_model

    model = load_model(ref, getattr(args, "arch", None), dict(getattr(args, "model_args", None) or ()))
    assumed = getattr(model, "assumptions", [])
    if assumed and getattr(args, "strict", False):
        more = f" (and {len(assumed) - 1} more)" if len(assumed) > 1 else ""
        raise VitDeployError(f"--strict: {ref} would need {assumed[0]}{more}")
    args.notes = [*getattr(args, "notes", []), *assumed]
    return model


def load_model_arg(args):
    """The model named by ``model_arguments``' options, with its --keep plan applied."""
    from vitdeploy.models.token_plan import apply_keep_plan

    if args.package and not args.keep:
        raise VitDeployError("--package needs --keep (the token steps whose dropped tokens it packages)")
    model = load_model_from(args, args.model)
    if args.keep:
        assumptions = getattr(model, "assumptions", [])
        model = apply_keep_plan(model, args.keep, package=args.package)
        model.assumptions = assumptions
    return model


def check_onnx_files(refs: list[str]) -> None:
    """Refuse, before any work, MODEL arguments naming .onnx files that are not readable ONNX models."""
    import onnx
    from google.protobuf.message import DecodeError

    for ref in (r for r in refs if r.endswith(".onnx")):
        if not Path(ref).is_file():
            raise VitDeployError(f"{ref}: no such ONNX file" + (" (it is a directory)" if Path(ref).is_dir() else ""))
        try:
            graph = onnx.load(ref, load_external_data=False).graph
        except (DecodeError, ValueError, OSError, RuntimeError):
            graph = None
        if graph is None or not (graph.node and graph.input and graph.output):
            raise VitDeployError(f"{ref}: not a readable ONNX model (empty, truncated or another kind of file); "
                                 "re-export it")


def load_model_refs(args, refs: list[str]) -> dict:
    """Before any work: .onnx files checked readable, every other MODEL loaded with the checkpoint
    options (--strict refusing what would be assumed), and a note for what is, said now (a server
    runs until it is stopped). Returns reference → model."""
    check_onnx_files(refs)
    loaded = {ref: load_model_from(args, ref) for ref in refs if not ref.endswith(".onnx")}
    print_notes(args)
    args.notes = []
    return loaded


def print_notes(args) -> None:
    """What had to be assumed while loading models, one ``vitdeploy: note:`` line each on stderr."""
    for note in getattr(args, "notes", []):
        print(f"vitdeploy: note: {note}", file=sys.stderr)


def print_json_or(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=2) if getattr(args, "json", False) else text)

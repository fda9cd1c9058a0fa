"""`vitdeploy export`: checked ONNX export with static token counts and a dynamic batch."""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import SELECTION_METHODS
from vitdeploy.cli._common import load_model_arg, model_arguments, print_json_or
from vitdeploy.cli._options import non_empty, whole_number_in


def register(sub) -> None:
    from vitdeploy.export.config import MAX_OPSET, MIN_OPSET, TARGETS, ExportConfig

    d = ExportConfig()
    p = sub.add_parser("export", help="export to ONNX (static token counts, dynamic batch) and check it",
                       description="Export MODEL to ONNX with a dynamic batch axis and static per-layer token counts, "
                                   "then run the ONNX checker (full), the op audit (no sort, target allowlist) and an "
                                   "ONNX Runtime parity check. The .onnx and OUT.export.json are written only if all pass.")
    model_arguments(p)
    p.add_argument("--out", type=non_empty, required=True, help="output .onnx path (with --to-hf: an output directory)")
    p.add_argument("--to-hf", action="store_true",
                   help="write a Hugging Face transformers directory (config.json, preprocessor_config.json, "
                        "model.safetensors) instead of ONNX, for models transformers' ViT can express: the same "
                        "widths in every block and no token plan (e.g. a fine-tuned or 2:4-sparse model)")
    p.add_argument("--selection", choices=SELECTION_METHODS, default=d.selection,
                   help="topk: TopK with a static k; rank: sort-free (comparisons + one-hot MatMul), no TopK at all")
    p.add_argument("--target", choices=TARGETS, default=d.target,
                   help="whose operator allowlist the audit enforces (default: %(default)s)")
    p.add_argument("--opset", type=whole_number_in(MIN_OPSET, MAX_OPSET), default=d.opset,
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: %(default)s)")
    p.add_argument("--as-static-star", action="store_true",
                   help="for an a-STAR model (input-dependent token counts, not exportable): export its static STAR "
                        "plan instead, which keeps a fixed upper-bound count per layer")
    p.add_argument("--parity-data", type=non_empty, metavar="DATA",
                   help="check parity on DATA's first test images (fashion-mnist or an ImageFolder directory) "
                        "instead of random noise: learned token scores can nearly tie on noise")
    p.add_argument("--resize", action="store_true", help="resize --parity-data images to the model's input size")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a summary")
    p.set_defaults(run=_run_export)


def _run_export(args) -> None:
    from vitdeploy.export.onnx import ExportConfig, export_onnx, report_path
    from vitdeploy.io import check_output_files
    from vitdeploy.report import export_summary

    if args.to_hf:
        return _export_hf(args)
    if not args.out.endswith(".onnx"):
        raise VitDeployError(f"--out {args.out}: the output file name must end in .onnx")
    check_output_files(args.out, report_path(args.out))
    config = ExportConfig(opset=args.opset, selection=args.selection, target=args.target,
                          parity_data=args.parity_data, parity_resize=args.resize)
    model = load_model_arg(args)
    if args.as_static_star:
        model = _static_star(model)
    report = export_onnx(model, args.out, config)
    print_json_or(args, report.to_dict(), export_summary(report.to_dict(), report_path(args.out)))


def _export_hf(args) -> None:
    from vitdeploy.io import check_output_dir
    from vitdeploy.models.huggingface import HF_FILES, save_hf_directory

    if args.out.endswith(".onnx") or args.as_static_star or args.parity_data:
        raise VitDeployError("--to-hf writes a directory (--out DIR) and takes no ONNX options")
    check_output_dir(args.out, HF_FILES)
    save_hf_directory(load_model_arg(args), args.out)
    print_json_or(args, {"out": args.out, "format": "huggingface"},
                  f"wrote {args.out} (Hugging Face layout, read back with identical logits)")


def _static_star(model):
    from vitdeploy.models.token_plan import with_spec

    if not model.spec.adaptive:
        raise VitDeployError("--as-static-star applies only to a-STAR models (this one keeps static token counts)")
    return with_spec(model, model.spec.static_counterpart())

"""`vitdeploy quantize`: calibrated INT8 post-training quantization, written as checked Q/DQ ONNX."""

from __future__ import annotations

import argparse
import sys

from vitdeploy.cli._common import load_model_arg, model_arguments, print_json_or
from vitdeploy.cli._options import add_config_options, config_values, non_empty
from vitdeploy.errors import VitDeployError

EXAMPLES = """examples:
  vitdeploy quantize fmnist_vit --calib fashion-mnist --out int8.onnx
  vitdeploy quantize out/pruned --calib ~/data/train --eval ~/data/val --calibration percentile --out int8.onnx
  vitdeploy quantize fmnist_vit --calib fashion-mnist --target tensorrt --parts linear,attention --out trt-int8.onnx
  vitdeploy quantize out/pruned --calib fashion-mnist --qat-steps 200 --out int8.onnx   # fine-tuned through INT8
"""

SETTINGS = {
    "target": "whose Q/DQ placement to write: onnxruntime (unsigned activations, which its x86 kernels run "
              "fastest) or tensorrt (signed and symmetric, zero points 0)",
    "parts": "what runs in INT8, comma-separated: linear (the blocks' weight MatMuls), attention (Q·Kᵀ and P·V), "
             "patch-embed, head. LayerNorm, Softmax, GELU, residual adds and token selection stay in float",
    "calibration": "how activation ranges are set from the calibration images",
    "percentile": "with --calibration percentile: the share of each activation's magnitudes kept in range",
    "calib_images": "calibration images, the first N of DATA's training split",
    "calib_batch": "images per calibration batch",
    "max_drop": "refuse (and write nothing) if INT8 loses more top-1 points than this against the float model",
    "eval_limit": "evaluate on the first N test images",
    "qat_steps": "quantization-aware fine-tuning steps (distilled from the float model, the linear part's INT8 "
                 "rounding simulated with the ranges the graph then uses) for when calibration alone loses too much",
    "qat_lr": "peak learning rate of the quantization-aware fine-tune",
    "qat_batch": "batch of the quantization-aware fine-tune",
}


def register(sub) -> None:
    from vitdeploy.export.config import TARGETS
    from vitdeploy.quantize.config import CALIBRATIONS, QuantizeConfig

    p = sub.add_parser("quantize", help="INT8 post-training quantization to Q/DQ ONNX, checked for accuracy",
                       description="Export MODEL, calibrate INT8 activation ranges on real images and write Q/DQ ONNX "
                                   "(weights INT8, symmetric, per channel). The INT8 graph passes the ONNX checker "
                                   "and the target's op audit, and its top-1 and agreement with the float graph are "
                                   "measured on test images; OUT and OUT.quantize.json are written only if it loses "
                                   "at most --max-drop points.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p)
    p.add_argument("--calib", type=non_empty, required=True, metavar="DATA",
                   help="calibration images: fashion-mnist or an ImageFolder directory (its train split)")
    p.add_argument("--eval", type=non_empty, metavar="DATA",
                   help="evaluation images (their test split; default: --calib's)")
    p.add_argument("--out", type=non_empty, required=True, help="output .onnx path")
    p.add_argument("--resize", action="store_true", help="resize images to the model's input size")
    add_config_options(p, QuantizeConfig, SETTINGS, choices={"target": TARGETS, "calibration": CALIBRATIONS})
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a summary")
    p.set_defaults(run=_run_quantize)


def _run_quantize(args) -> None:
    from vitdeploy.io import check_output_files
    from vitdeploy.quantize.config import QuantizeConfig
    from vitdeploy.quantize.ptq import quantize_model, report_path, summary
    from vitdeploy.schema import flag_name, validated

    if not args.out.endswith(".onnx"):
        raise VitDeployError(f"--out {args.out}: the output file name must end in .onnx")
    config = validated(QuantizeConfig(**config_values(args, SETTINGS)), flag_name)
    check_output_files(args.out, report_path(args.out))
    report = quantize_model(load_model_arg(args), args.out, config, args.calib, args.eval or args.calib,
                            args.resize, progress=sys.stderr.isatty())
    print_json_or(args, report.to_dict(), summary(report))

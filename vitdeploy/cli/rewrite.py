"""`vitdeploy rewrite`: fix ONNX graphs exported elsewhere with the rules of ``vitdeploy.export.rules``."""

from __future__ import annotations

from vitdeploy.cli._common import print_json_or
from vitdeploy.cli._options import non_empty


def register(sub) -> None:
    from vitdeploy.export.config import TARGETS
    from vitdeploy.export.rules import RULES

    p = sub.add_parser("rewrite", help="fix an ONNX graph from elsewhere: rewrite rules (e.g. argsort+slice → TopK(k)), "
                                       "fold constants",
                       description="Rewrite an ONNX graph exported by another token-pruning codebase: constants are "
                                   "folded and the rewrite rules (see --rules) applied. The op audit and an ONNX Runtime "
                                   "before/after parity check follow.")
    p.add_argument("input", metavar="IN.onnx")
    p.add_argument("--out", type=non_empty, required=True, help="output .onnx path")
    p.add_argument("--target", choices=TARGETS, default="onnxruntime",
                   help="whose operator allowlist the audit enforces (default: %(default)s)")
    p.add_argument("--rules", metavar="NAME,...", type=lambda text: text.split(","),
                   help="comma-separated rewrite rules to apply (default: all): "
                        + "; ".join(f"{name}: {rule.description}" for name, rule in RULES.items().items()))
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.set_defaults(run=_run_rewrite)


def _run_rewrite(args) -> None:
    from vitdeploy.export.rewrite import rewrite_onnx

    report = rewrite_onnx(args.input, args.out, target=args.target, rule_names=args.rules).to_dict()
    audit = "passed" if report["audit"]["passed"] else "FAILED: " + "; ".join(report["audit"]["violations"])
    print_json_or(args, report, f"wrote {args.out}: {len(report['applied'])} rewrite(s) applied, "
                                 f"audit {audit}")

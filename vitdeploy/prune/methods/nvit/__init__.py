"""NViT global structural pruning (Yang et al.): embed dim, heads, per-head QK/V dims and MLP
neurons ranked by Hessian-aware importance minus a latency (or FLOPs) term, removed a few at a
time with short distilled fine-tunes, then compacted into a smaller dense model."""

from __future__ import annotations

from vitdeploy.errors import VitDeployError
from vitdeploy.prune.methods.nvit.config import CRITERIA, LATENCY_PRECISIONS, NViTConfig
from vitdeploy.prune.registry import METHODS, DataOption, PruneMethod
from vitdeploy.prune.summaries import accuracy_lines, latency_line
from vitdeploy.quantize.config import INT8
from vitdeploy.tables import format_table

TRAIN_DATA = DataOption("--calib", "fine-tuning and importance data (its train split): fashion-mnist or an "
                                   "ImageFolder directory")


def run(model, config: NViTConfig, context):
    """Prune; with a latency target, the table is first checked and drift-corrected against the
    unpruned model measured now, and the result is measured against the target."""
    from vitdeploy.data import dataset_for
    from vitdeploy.lut.measure import latency_check, table_for_model
    from vitdeploy.prune.methods.nvit.structural import prune_nvit

    if config.target_latency_ms is not None and not config.lut:
        raise VitDeployError("--target-latency-ms needs --lut FILE (a latency table for the target device)")
    if config.target_latency_ms is None:
        table, drift = None, None
    else:
        table, drift = table_for_model(config.lut, model, int8=config.latency_precision == INT8)
    train_data = dataset_for(model, context.data, "train", resize=context.resize, pipeline=context.pipeline)
    pruned, report = prune_nvit(model, config, train_data, context.eval_data, lut=table, progress=context.progress)
    if table is not None:
        report["latency"] = {**latency_check(table, drift, model, pruned, config.target_latency_ms),
                             "drift": drift.to_dict()}
    return pruned, report


def summary(report: dict, out: str) -> str:
    """Per-block dims before → after of an NViT report, then params, MACs and accuracy."""
    before, after = report["dims"]["before"], report["dims"]["after"]
    rows = [(i, _dims(b), _dims(a)) for i, (b, a) in enumerate(zip(before["blocks"], after["blocks"]), start=1)]
    lines = [f"embed dim {before['embed_dim']} → {after['embed_dim']}",
             format_table(["block", "before: heads×qk/v, mlp", "after"], rows),
             f"params {report['params']['ratio']:.3f}×, MACs {report['macs']['ratio']:.3f}× "
             f"(compaction max abs diff {report['compaction_max_abs_diff']:.1e})"]
    lines += accuracy_lines(report.get("accuracy", {}))
    if "latency" in report:
        lines.append(latency_line(report["latency"]))
    lines.append(f"saved {out}")
    return "\n".join(lines)


def _dims(block: dict) -> str:
    return f"{block['heads']}×{block['qk_dim']}/{block['v_dim']}, {block['mlp_dim']}"


METHODS.register(PruneMethod(
    name="nvit", help="NViT global structural pruning, compacted to a dense model",
    description=__doc__.replace("\n", " ") + " Give --target-flops or --target-latency-ms with --lut.",
    config=NViTConfig,
    options={
        "target_flops": "target FLOPs as a ratio of the unpruned model's, in (0, 1)",
        "target_latency_ms": "target predicted latency in ms, instead of --target-flops (needs --lut)",
        "lut": "latency table for the latency term (default: FLOPs stand in)",
        "latency_precision": "int8: the latency target is for the pruned model once quantized (vitdeploy quantize); "
                             "needs a table built with --precision int8",
        "criterion": "importance criterion",
        "eta": "weight of the latency term",
        "temperature": "distillation temperature of the KL term to the unpruned model",
        "prune_step": "cost removed per pruning step, as a share of the original",
        "calib_batches": "batches per importance estimate",
        "batch_size": "fine-tuning batch",
        "finetune_steps": "fine-tuning steps after each pruning step",
        "final_finetune_steps": "fine-tuning steps at the end",
        "lr": "fine-tuning peak learning rate",
        "round_to": "keep every dim a multiple of this; 16 if sparse24 follows",
        "seed": "calibration sampling and fine-tuning order",
    },
    choices={"criterion": CRITERIA, "latency_precision": LATENCY_PRECISIONS}, defaults={"target_flops": None},
    run=run, summary=summary, data=TRAIN_DATA))

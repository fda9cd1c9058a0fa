"""Top-1 accuracy of a model in PyTorch and through its ONNX export on ONNX Runtime."""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vitdeploy import runtime
from vitdeploy.data import batches, dataset_for
from vitdeploy.errors import VitDeployError
from vitdeploy.export import check
from vitdeploy.export.onnx import ExportConfig, export_onnx
from vitdeploy.models.flops import total_macs
from vitdeploy.models.vit import ViT
from vitdeploy.tables import format_table

EVAL_BATCH = 256


@dataclass
class EvalOptions:
    data: str = "fashion-mnist"
    split: str = "test"
    limit: int | None = None
    resize: bool = False
    with_onnx: bool = True
    """Also evaluate through ONNX Runtime (and report agreement with PyTorch)."""
    onnx_path: str | None = None
    """The .onnx to evaluate; None exports the model to a temporary file first."""
    selection: str = "topk"


@torch.no_grad()
def predict(model: ViT, dataset, batch_size: int = EVAL_BATCH, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels, true labels) over a whole dataset, computed on the current runtime's
    device. In a torchrun job each process predicts its share of every batch and every process
    gets all the predictions, so each image is counted exactly once."""
    rt = runtime.current()
    predictions = torch.zeros(len(dataset), dtype=torch.long)
    labels = torch.zeros(len(dataset), dtype=torch.long)
    with rt.on_device(model), rt.autocast():
        model.eval()
        for index, (x, y) in enumerate(tqdm(batches(dataset, batch_size, shard=True), desc="torch eval",
                                            disable=not progress, total=math.ceil(len(dataset) / batch_size))):
            first = index * batch_size
            start = first + rt.shard_bounds(min(batch_size, len(dataset) - first))[0]
            predictions[start:start + len(y)] = finite_logits(model(rt.to_device(x)[0]), "the model").argmax(-1).cpu()
            labels[start:start + len(y)] = torch.as_tensor(y)
    if rt.world_size > 1:  # each entry is filled by one process and 0 elsewhere
        predictions, labels = rt.reduce_sum(predictions).long(), rt.reduce_sum(labels).long()
    return predictions, labels


def finite_logits(logits, source: str):
    """``logits`` (a tensor or array), refused if any is NaN or infinite: their argmax would be meaningless."""
    finite = torch.isfinite(logits).all() if isinstance(logits, torch.Tensor) else np.isfinite(logits).all()
    if not finite:
        raise VitDeployError(f"{source} produced NaN or infinite outputs, so its accuracy cannot be measured")
    return logits


def top1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).float().mean().item()


def evaluate(model: ViT, dataset, batch_size: int = EVAL_BATCH) -> float:
    return top1(*predict(model, dataset, batch_size))


def onnx_predictions(onnx_path: str | Path, dataset, progress: bool = False) -> torch.Tensor:
    session = check.ort_session(onnx_path)
    _check_input_shape(session, dataset, onnx_path)
    outputs = [
        finite_logits(check.run_session(session, x.numpy()), str(onnx_path)).argmax(-1)
        for x, _ in tqdm(batches(dataset, EVAL_BATCH), desc="onnxruntime eval", disable=not progress,
                         total=math.ceil(len(dataset) / EVAL_BATCH))
    ]
    return torch.from_numpy(np.concatenate(outputs))


def evaluate_model(model: ViT, options: EvalOptions, progress: bool = False) -> dict:
    if model.spec.adaptive and options.with_onnx:
        raise VitDeployError("this is an a-STAR model (input-dependent token counts): it runs in PyTorch only, so "
                             "evaluate it with --no-onnx")
    dataset = dataset_for(model, options.data, options.split, options.limit, options.resize)
    torch_pred, labels = predict(model, dataset, EVAL_BATCH, progress)
    report = {
        "model": model.spec.name, "data": options.data, "split": options.split, "images": len(labels),
        "macs": total_macs(model.spec), "torch_top1": top1(torch_pred, labels), "options": asdict(options),
    }
    if not options.with_onnx:
        return report
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = options.onnx_path
        if onnx_path is None:
            onnx_path = Path(tmp) / "model.onnx"
            export_onnx(model, onnx_path, ExportConfig(selection=options.selection))
        onnx_pred = onnx_predictions(onnx_path, dataset, progress)
    report["onnx_top1"] = top1(onnx_pred, labels)
    report["onnx_torch_agreement"] = (onnx_pred == torch_pred).float().mean().item()
    return report


def eval_table(report: dict) -> str:
    rows = [["PyTorch", report["torch_top1"], ""]]
    if "onnx_top1" in report:
        rows.append(["ONNX Runtime", report["onnx_top1"], report["onnx_torch_agreement"]])
    title = (f"{report['model']} on {report['data']}/{report['split']} ({report['images']} images, "
             f"{report['macs'] / 1e6:.2f}M MACs)")
    return title + "\n\n" + format_table(["runtime", "top-1", "agrees with PyTorch"], rows)


def _check_input_shape(session, dataset, onnx_path) -> None:
    expected = [d if isinstance(d, int) else None for d in session.get_inputs()[0].shape[1:]]
    actual = list(dataset[0][0].shape)
    if any(e is not None and e != a for e, a in zip(expected, actual)) or len(expected) != len(actual):
        raise VitDeployError(f"{onnx_path} expects inputs of shape {expected}, but the data gives {actual}; "
                             "is it the export of this model?")

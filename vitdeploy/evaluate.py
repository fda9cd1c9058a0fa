"""Top-1 accuracy of a model in PyTorch and through its ONNX export on ONNX Runtime."""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vitdeploy.data import batches
from vitdeploy.export import check
from vitdeploy.export.onnx import ExportConfig, export_onnx
from vitdeploy.models.flops import total_macs
from vitdeploy.models.vit import ViT
from vitdeploy.report import format_table
from vitdeploy.train.loop import dataset_for, predict

EVAL_BATCH = 256


@dataclass
class EvalOptions:
    data: str = "fashion-mnist"
    split: str = "test"
    limit: int | None = None
    resize: bool = False
    onnx: str | None = "export"
    """None: PyTorch only; "export": export MODEL to a temporary .onnx; else a path to an .onnx."""
    selection: str = "topk"


def onnx_predictions(onnx_path: str | Path, dataset, progress: bool = False) -> np.ndarray:
    session = check.ort_session(onnx_path)
    outputs = [
        check.run_session(session, x.numpy()).argmax(-1)
        for x, _ in tqdm(batches(dataset, EVAL_BATCH), desc="onnxruntime eval", disable=not progress,
                         total=math.ceil(len(dataset) / EVAL_BATCH))
    ]
    return np.concatenate(outputs)


def evaluate_model(model: ViT, options: EvalOptions, progress: bool = False) -> dict:
    dataset = dataset_for(model, options.data, options.split, options.limit, options.resize)
    torch_pred, labels = predict(model, dataset, EVAL_BATCH, progress)
    report = {
        "model": model.spec.name, "data": options.data, "split": options.split, "images": len(labels),
        "macs": total_macs(model.spec), "torch_top1": _top1(torch_pred, labels), "options": asdict(options),
    }
    if options.onnx is None:
        return report
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = options.onnx
        if onnx_path == "export":
            onnx_path = Path(tmp) / "model.onnx"
            export_onnx(model, onnx_path, ExportConfig(selection=options.selection))
        onnx_pred = torch.from_numpy(onnx_predictions(onnx_path, dataset, progress))
    report["onnx_top1"] = _top1(onnx_pred, labels)
    report["onnx_torch_agreement"] = (onnx_pred == torch_pred).float().mean().item()
    return report


def eval_table(report: dict) -> str:
    rows = [["PyTorch", report["torch_top1"], ""]]
    if "onnx_top1" in report:
        rows.append(["ONNX Runtime", report["onnx_top1"], report["onnx_torch_agreement"]])
    title = f"{report['model']} on {report['data']}/{report['split']} ({report['images']} images, {report['macs'] / 1e6:.2f}M MACs)"
    return title + "\n\n" + format_table(["runtime", "top-1", "agrees with PyTorch"], rows)


def _top1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).float().mean().item()

"""The same model through torch's other ONNX exporter, as a speed reference for our own export.

vitdeploy exports with torch's dynamo exporter (``onnx.py``). Speedups are quoted against the
faster of that export and this one: torch's TorchScript exporter (``dynamo=False``), the path
timm's models usually take to ONNX. No fusion passes run on it; its parity with PyTorch is
checked so that a wrong graph is never timed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitdeploy.errors import VitDeployError
from vitdeploy.export import check
from vitdeploy.export.onnx import INPUT_NAME, OUTPUT_NAME, input_shape, quiet_exporter, torch_reference
from vitdeploy.models.vit import ViT

REFERENCE_OPSET = 18
"""The lowest opset our own exports allow (``config.MIN_OPSET``)."""


def export_torchscript(model: ViT, out: str | Path, opset: int = REFERENCE_OPSET) -> check.ParityReport:
    """Export ``model`` to ``out`` with ``torch.onnx.export(dynamo=False)`` and a dynamic batch axis."""
    shape = input_shape(model)
    model.eval()
    with torch.no_grad(), quiet_exporter():
        torch.onnx.export(model, (torch.zeros(2, *shape),), str(out), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    parity = check.parity(out, torch_reference(model), shape)
    if not parity.passed:
        raise VitDeployError(f"{out}: the TorchScript export differs from PyTorch by {parity.max_abs_diff:.2e}")
    return parity

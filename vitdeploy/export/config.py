"""Export settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.export.allowlists import TENSORRT_MAX_OPSET
from vitdeploy.models.spec import SELECTION_METHODS
from vitdeploy.schema import check_fields, schema

TARGETS = ("onnxruntime", "tensorrt")
MIN_OPSET = 18
"""torch's dynamo exporter writes opset 18 natively; its down-conversion to 17 fails on ViTs."""
MAX_OPSET = 24
"""The newest opset exported and checked on ONNX Runtime here (23+ uses the ONNX Attention op)."""


@schema
@dataclass
class ExportConfig:
    opset: int = 20
    """20 is the first opset where torch writes GELU as the ONNX ``Gelu`` op, which ONNX Runtime
    fuses with its bias and TensorRT imports as one layer (see ``fuse.py``)."""
    selection: str = "topk"
    target: str = "onnxruntime"
    example_batch: Annotated[int, Field(ge=2)] = 2
    """Batch of the example input; must be ≥ 2 or the exporter specialises the batch axis to 1."""
    parity_batches: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] = (1, 3)
    parity_atol: float = 1e-4
    parity_data: str | None = None
    """Check parity on the first test images of this data (fashion-mnist or an ImageFolder
    directory) instead of random-normal inputs."""
    parity_resize: bool = False
    """Resize ``parity_data``'s images to the model's input size."""

    def validate(self) -> "ExportConfig":
        check_fields(self)
        if self.selection not in SELECTION_METHODS:
            raise VitDeployError(f"unknown selection {self.selection!r}: choose {' or '.join(SELECTION_METHODS)}")
        if self.target not in TARGETS:
            raise VitDeployError(f"unknown target {self.target!r}: choose {' or '.join(TARGETS)}")
        top = TENSORRT_MAX_OPSET if self.target == "tensorrt" else MAX_OPSET
        if not MIN_OPSET <= self.opset <= min(top, MAX_OPSET):
            raise VitDeployError(f"opset {self.opset} is not supported for {self.target}: "
                                 f"choose {MIN_OPSET}..{min(top, MAX_OPSET)}")
        return self

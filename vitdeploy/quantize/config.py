"""Quantization settings (a light module: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import check_fields, schema

INT8 = "int8"
"""The precision name of INT8 Q/DQ graphs (latency tables, budgets)."""
CALIBRATIONS = ("minmax", "percentile", "entropy")
"""How activation ranges are chosen from the calibration images (ONNX Runtime's calibrators)."""

PARTS = ("linear", "attention", "patch-embed", "head")
"""What can run in INT8: the blocks' weight MatMuls (QKV, projection, MLP), the attention MatMuls
(Q·Kᵀ and P·V, activations on both sides), the patch-embedding convolution, the classifier."""

DEFAULT_PARTS = ("linear",)
"""LayerNorm, Softmax, GELU, the residual adds and token selection always stay in float: they are
where ViTs lose accuracy in INT8 and they hold a small share of the MACs."""


@schema
@dataclass
class QuantizeConfig:
    target: str = "onnxruntime"
    """Whose Q/DQ placement to write: ``onnxruntime`` (unsigned activations with zero points, which its
    x86 kernels run fastest) or ``tensorrt`` (signed, symmetric: zero points are 0)."""
    parts: tuple[str, ...] = DEFAULT_PARTS
    calibration: str = "minmax"
    percentile: Annotated[float, Field(gt=90, lt=100)] = 99.999
    """For ``calibration="percentile"``: the share of each activation's magnitudes kept in range."""
    calib_images: Annotated[int, Field(ge=1, le=1_000_000)] = 512
    calib_batch: Annotated[int, Field(ge=1, le=4096)] = 32
    max_drop: Annotated[float, Field(ge=0, le=100)] = 1.0
    """Top-1 points the INT8 model may lose against the float one on the evaluation data."""
    eval_limit: Annotated[int, Field(ge=1, le=10_000_000)] | None = 5000
    """Evaluate on the first N images of the test split (None: all)."""
    qat_steps: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    """Quantization-aware fine-tuning steps of the ``linear`` part before writing (0: calibration alone)."""
    qat_lr: Annotated[float, Field(gt=0, le=1)] = 1e-4
    qat_batch: Annotated[int, Field(ge=1, le=4096)] = 64

    def validate(self) -> "QuantizeConfig":
        from vitdeploy.export.config import TARGETS

        check_fields(self)
        if self.target not in TARGETS:
            raise VitDeployError(f"unknown target {self.target!r}: choose {' or '.join(TARGETS)}")
        if self.calibration not in CALIBRATIONS:
            raise VitDeployError(f"unknown calibration {self.calibration!r}: choose one of {', '.join(CALIBRATIONS)}")
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise VitDeployError(f"parts to quantize: {', '.join(unknown) or 'none given'}; "
                                 f"choose from {', '.join(PARTS)}")
        if self.qat_steps and "linear" not in self.parts:
            raise VitDeployError("quantization-aware fine-tuning trains the linear part: include linear in the parts")
        if self.calib_images < self.calib_batch:
            raise VitDeployError(f"{self.calib_images} calibration images are fewer than one batch of "
                                 f"{self.calib_batch}")
        return self

"""Quantization-aware fine-tuning: the blocks' weight MatMuls fine-tuned through the INT8 rounding
they will run with, then written as the same Q/DQ graph, with the ranges they were trained with.

Post-training quantization rounds weights and activations that training never saw. When that loses
too much, a short distilled fine-tune through fake quantization (the rounding simulated in float,
gradients passed straight through) lets the weights adapt to it. What is simulated is exactly what
the written graph computes, per quantized Linear (QKV, projection, MLP fc1 and fc2):

- its weight: per output channel, symmetric INT8 in [-127, 127], scale max|w| / 127, recomputed
  from the weights at every step; ONNX Runtime's quantizer computes the same from the final ones;
- its input: one range per tensor, min-max calibrated on the calibration images before the
  fine-tune and fixed during it (uint8 with a zero point for the onnxruntime target, symmetric
  INT8 for tensorrt). The quantizer is handed these scales and zero points
  (``TensorQuantOverrides``), so the graph uses the very ones the weights were trained with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnxruntime.quantization.quant_utils import compute_scale_zp
from torch import nn

from vitdeploy.quantize.config import QuantizeConfig

QUANTIZED_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
WEIGHT_RANGE = (-127, 127)


@dataclass(frozen=True)
class InputQuantization:
    """How one Linear's input is quantized: ``scale`` and ``zero_point`` over [qmin, qmax]."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @classmethod
    def calibrated(cls, low: float, high: float, target: str) -> "InputQuantization":
        """ONNX Runtime's own min-max rule for the range [low, high]: uint8 with a zero point for
        onnxruntime, symmetric int8 (zero point 0) for tensorrt."""
        symmetric = target == "tensorrt"
        qmin, qmax = (-127, 127) if symmetric else (0, 255)
        dtype = np.int8 if symmetric else np.uint8
        zero_point, scale = compute_scale_zp(np.array(low, np.float32), np.array(high, np.float32),
                                             np.array(qmin, dtype), np.array(qmax, dtype), symmetric=symmetric)
        return cls(float(scale), int(zero_point), qmin, qmax)

    def override(self) -> list[dict]:
        """The form ONNX Runtime's ``TensorQuantOverrides`` takes."""
        dtype = np.int8 if self.qmin < 0 else np.uint8
        return [{"scale": np.array(self.scale, dtype=np.float32), "zero_point": np.array(self.zero_point, dtype=dtype)}]


class FakeQuantLinear(nn.Linear):
    """A Linear whose input and weight pass through INT8 fake quantization (straight-through gradients)."""

    def __init__(self, linear: nn.Linear, quantization: InputQuantization):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None)
        self.load_state_dict(linear.state_dict())
        self.quantization = quantization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantization
        x = torch.fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, q.qmin, q.qmax)
        return F.linear(x, fake_quantized_weight(self.weight), self.bias)


def fake_quantized_weight(weight: torch.Tensor) -> torch.Tensor:
    scale = (weight.detach().abs().amax(dim=1) / WEIGHT_RANGE[1]).clamp_min(torch.finfo(torch.float32).tiny)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale.float(), zero, 0, *WEIGHT_RANGE)


def quantized_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The block Linears that the ``linear`` part quantizes, by module name (``blocks.3.mlp.fc1``)."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.startswith("blocks.") and name.endswith(QUANTIZED_LINEARS)}


@torch.no_grad()
def calibrate_inputs(model: nn.Module, calibration: list[np.ndarray], target: str) -> dict[str, InputQuantization]:
    """Min-max ranges of every quantized Linear's input over the calibration batches."""
    ranges: dict[str, list[float]] = {}

    def record(name: str):
        def hook(module, inputs):
            low, high = inputs[0].min().item(), inputs[0].max().item()
            seen = ranges.setdefault(name, [low, high])
            seen[:] = [min(seen[0], low), max(seen[1], high)]
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in quantized_linears(model).items()]
    try:
        model.eval()
        for batch in calibration:
            model(torch.from_numpy(batch))
    finally:
        for handle in handles:
            handle.remove()
    return {name: InputQuantization.calibrated(low, high, target) for name, (low, high) in ranges.items()}


def with_fake_quantization(model: nn.Module, inputs: dict[str, InputQuantization]) -> nn.Module:
    """A copy of ``model`` with every quantized Linear fake-quantized as ``inputs`` says."""
    copied = copy.deepcopy(model)
    for name, linear in quantized_linears(copied).items():
        parent, _, attribute = name.rpartition(".")
        setattr(copied.get_submodule(parent), attribute, FakeQuantLinear(linear, inputs[name]))
    return copied


def without_fake_quantization(model: nn.Module) -> nn.Module:
    """``model`` (in place) with plain Linears holding the fine-tuned weights, ready to export."""
    for name, linear in quantized_linears(model).items():
        if isinstance(linear, FakeQuantLinear):
            plain = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None)
            plain.load_state_dict(linear.state_dict())
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, plain)
    return model


def fine_tune(model, train_set, calibration: list[np.ndarray], config: QuantizeConfig, steps: int,
              progress: bool = False) -> tuple[nn.Module, dict[str, InputQuantization], dict]:
    """(the float model fine-tuned through fake quantization, its inputs' quantization, the
    fine-tune's report): ``steps`` steps distilled from ``model``, which is left as it was."""
    from vitdeploy.train.config import TrainConfig
    from vitdeploy.train.loop import fine_tune as train_steps

    inputs = calibrate_inputs(model, calibration, config.target)
    student = with_fake_quantization(model, inputs)
    train = TrainConfig(batch_size=config.qat_batch, lr=config.qat_lr, min_lr=config.qat_lr / 100,
                        warmup_epochs=0.0, distill_temperature=1.0, distill_weight=1.0)
    report = train_steps(student, train_set, train, steps, teacher=model.eval(), progress=progress,
                         desc="quantization-aware fine-tune")
    return without_fake_quantization(student).eval(), inputs, report


def tensor_overrides(graph: onnx.ModelProto, nodes: list[str], inputs: dict[str, InputQuantization]) -> dict:
    """``TensorQuantOverrides`` for the inputs of ``nodes`` (the quantized MatMuls), found by the
    module each was exported from."""
    from vitdeploy.quantize.parts import module_of

    wanted = set(nodes)
    return {node.input[0]: inputs[module_of(node)].override() for node in graph.graph.node if node.name in wanted}

"""PyTorch backend: the model itself, eager or compiled, on CPU or CUDA.

Options (all from ``BuildConfig``):

- ``precision``: fp32, fp16 or bf16, applied with ``model.to(dtype)``; inputs are cast once in
  ``stage``.
- ``threads``: torch's CPU thread count for the span of each call (``vitdeploy.threads``); the
  setting is process-wide, so the caller's count is restored after every call.
- ``compile``: ``torch.compile(model, mode="max-autotune")``. That mode already captures CUDA graphs
  on GPU, so it does not combine with ``cuda_graphs``.
- ``cuda_graphs`` (CUDA only): one graph per batch size, captured in ``stage`` after warm-up runs
  on a side stream; ``run`` replays it.
- ``sparse_weights`` (CUDA, fp16/bf16 only): every Linear inside the transformer blocks gets its
  weight converted with ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt or CUTLASS 2:4
  kernels). The weights must already be 2:4 sparse, as ``vitdeploy prune sparse24`` leaves
  them; ``vitdeploy bench`` asks for this when the spec records 2:4 (or with ``--sparsity 2:4``).

CUDA is touched only inside ``build`` and the engine, never at import time. Every forward pass
runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vitdeploy.backends._base import PRUNE_24_HINT, BuildConfig, ModelSource
from vitdeploy.hardware import device_name
from vitdeploy.errors import VitDeployError
from vitdeploy.models.sparse24 import require_24_weight
from vitdeploy.threads import torch_threads

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_MODE = "max-autotune"
GRAPH_WARMUP_RUNS = 3


@dataclass
class CapturedGraph:
    """A CUDA graph with the static tensors it reads from and writes to."""

    graph: "torch.cuda.CUDAGraph"
    static_input: torch.Tensor
    static_output: torch.Tensor


class TorchEngine:
    """A prepared model plus the tensors (and CUDA graphs) that feed it."""

    backend = "torch"

    def __init__(self, model: nn.Module, config: BuildConfig, device_name: str):
        self.model = model
        self.config = config
        self.device = config.device
        self.device_name = device_name
        self.dtype = DTYPES[config.precision]
        self._graphs: dict[tuple[int, ...], CapturedGraph] = {}
        self._output: torch.Tensor | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.run(self.stage(batch))
        return self._output.float().cpu().numpy()

    def stage(self, batch: np.ndarray) -> torch.Tensor:
        """The batch on the device in the engine's dtype (a CUDA graph's static input, if graphs are on)."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device, self.dtype)
            if not self.config.cuda_graphs:
                return x
            captured = self._graph_for(x)
            captured.static_input.copy_(x)
            return captured.static_input

    def run(self, staged: torch.Tensor) -> None:
        with self._threads(), torch.inference_mode():
            if self.config.cuda_graphs:
                self._replay(staged)
            else:
                self._output = self.model(staged)

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def metadata(self) -> dict:
        return {
            "backend": self.backend,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if self.device == "cuda" else None,
            "device": self.device,
            "device_name": self.device_name,
            "precision": self.config.precision,
            "threads": self.config.threads if self.device == "cpu" else None,
            "compile": self.config.compile,
            "cuda_graphs": self.config.cuda_graphs,
            "sparse_weights": self.config.sparse_weights,
        }

    def _threads(self) -> contextlib.AbstractContextManager:
        if self.device == "cpu" and self.config.threads is not None:
            return torch_threads(self.config.threads)
        return contextlib.nullcontext()

    def _replay(self, staged: torch.Tensor) -> None:
        captured = self._graph_for(staged)
        if staged is not captured.static_input:
            captured.static_input.copy_(staged)
        captured.graph.replay()
        self._output = captured.static_output

    def _graph_for(self, x: torch.Tensor) -> CapturedGraph:
        shape = tuple(x.shape)
        if shape not in self._graphs:
            self._graphs[shape] = capture_graph(self.model, x)
        return self._graphs[shape]


class TorchBackend:
    name = "torch"
    export_target = "onnxruntime"
    """Torch runs the model itself; only latency-table part graphs are exported, as for ONNX Runtime."""
    default_device = "cpu"
    static_shapes = False
    triton = None
    sparse_24 = True
    """Through ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt) on CUDA."""
    int8_float_precision = None
    """Torch runs the float model itself, not Q/DQ graphs."""

    def available(self, device: str = "cpu") -> bool:
        return not self.unavailable_reason(device)

    def unavailable_reason(self, device: str = "cpu") -> str:
        if device == "cuda" and not torch.cuda.is_available():
            return f"torch {torch.__version__} sees no CUDA GPU (a CPU-only build, or no GPU on this machine)"
        return ""

    def build(self, source: ModelSource, config: BuildConfig) -> TorchEngine:
        config.validate()
        check_options(config)
        if not self.available(config.device):
            raise VitDeployError(f"--device cuda: {self.unavailable_reason(config.device)}")
        model = prepare_model(source.torch_model(), config)
        return TorchEngine(model, config, device_name(config.device))


def check_options(config: BuildConfig) -> None:
    """Raise ``VitDeployError`` for option combinations the torch backend cannot run."""
    if config.device == "cpu" and config.cuda_graphs:
        raise VitDeployError("CUDA graphs need --device cuda")
    if config.device == "cpu" and config.sparse_weights:
        raise VitDeployError("torch's 2:4 sparse kernels (cuSPARSELt/CUTLASS) need --device cuda")
    if config.sparse_weights and config.precision == "fp32":
        raise VitDeployError("torch's 2:4 sparse kernels need --precision fp16 or bf16")
    if config.compile and config.cuda_graphs:
        raise VitDeployError(f"--compile (mode {COMPILE_MODE}) already uses CUDA graphs: drop --cuda-graphs")


def prepare_model(model: nn.Module, config: BuildConfig) -> nn.Module:
    """A copy of ``model`` on the device, in the precision, sparsified and compiled as configured."""
    model = copy.deepcopy(model).eval().to(device=config.device, dtype=DTYPES[config.precision])
    if config.sparse_weights:
        sparsify_block_linears(model)
    if config.compile:
        model = torch.compile(model, mode=COMPILE_MODE)
    return model


def sparsify_block_linears(model: nn.Module) -> None:
    """Give every Linear inside ``model.blocks`` a semi-structured (2:4) sparse weight, in place."""
    from torch.sparse import to_sparse_semi_structured

    with torch.no_grad():
        for name, module in model.blocks.named_modules():
            if isinstance(module, nn.Linear):
                check_two_four(module.weight, f"blocks.{name}")
                try:
                    module.weight = nn.Parameter(to_sparse_semi_structured(module.weight))
                except RuntimeError as exc:
                    raise VitDeployError(f"blocks.{name}: torch cannot use 2:4 kernels for this weight: "
                                         f"{str(exc).splitlines()[0]}") from None


def check_two_four(weight: torch.Tensor, name: str) -> None:
    """Raise ``VitDeployError`` unless ``weight`` is 2:4 sparse along its input dim, dims multiples of 16."""
    require_24_weight(weight, name, f"prune with `{PRUNE_24_HINT}` first")


def capture_graph(model: nn.Module, example: torch.Tensor) -> CapturedGraph:
    """Warm ``model`` up on a side stream, then capture one forward pass on ``example``'s shape."""
    with torch.inference_mode():
        static_input = example.clone()
        side_stream = torch.cuda.Stream()
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            for _ in range(GRAPH_WARMUP_RUNS):
                model(static_input)
        torch.cuda.current_stream().wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = model(static_input)
    return CapturedGraph(graph, static_input, static_output)


BACKEND = TorchBackend

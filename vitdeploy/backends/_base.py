"""The backend protocol: ``available()``, ``build(source, config) -> Engine``, ``Engine.infer``.

A backend turns a model into something that runs: ONNX Runtime sessions and TensorRT engines
start from the checked ONNX export, the torch backend from the model itself. ``ModelSource``
gives each what it needs, exporting lazily. Heavy and GPU libraries are imported inside the
backend that needs them, never at import time.

Timing goes through the shared harness (``vitdeploy.bench.harness``). An engine therefore
separates *staging* an input (copies to the device) from *running* it, so that the harness times
the run alone, and ``synchronize()`` waits for queued device work.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import schema

PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("cpu", "cuda")
SPARSITY_UNKNOWN = "unknown"
"""What ``ModelSource.sparsity()`` says of a bare .onnx: no spec records whether its weights are 2:4."""
MAX_THREADS = 1024
MAX_BATCH = 65536
"""Images per batch; above this one batch of even a small model does not fit in memory."""
PRUNE_24_HINT = "vitdeploy prune sparse24 MODEL --out DIR"
"""The command that leaves a model's block weights 2:4 sparse (named in the backends' error hints)."""


@schema
@dataclass
class BuildConfig:
    """Everything that changes what a backend builds; JSON-serialisable and hashed for caching."""

    precision: str = "fp32"
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 8)
    """Batch sizes the engine must serve: TensorRT's profile spans min..max, opt = the largest."""
    threads: int | None = 2
    """CPU threads (ONNX Runtime intra-op, torch); None = the library's default."""
    sparse_weights: bool = False
    """Ask for 2:4 sparse kernels (TensorRT SPARSE_WEIGHTS, torch cuSPARSELt). ``vitdeploy bench`` sets it
    per model from the spec's ``sparsity`` or its ``--sparsity`` flag (``vitdeploy.bench.run.sparse_weights_for``)."""
    workspace_mb: int = 4096
    cuda_graphs: bool = False
    compile: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    """Backend-specific extras, e.g. {"execution_provider": "CUDAExecutionProvider"}."""

    def validate(self) -> "BuildConfig":
        if self.precision not in PRECISIONS:
            raise VitDeployError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise VitDeployError(f"unknown device {self.device!r}: choose cpu or cuda")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or max(self.batch_sizes) > MAX_BATCH:
            raise VitDeployError(f"batch sizes must be whole numbers in 1..{MAX_BATCH}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise VitDeployError(f"threads must be in 1..{MAX_THREADS}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """A stable text form for cache keys."""
        return json.dumps(self.to_dict(), sort_keys=True)


class ModelSource:
    """A model as the backends see it: a vitdeploy model and/or an .onnx file.

    Built from a MODEL reference (directory, checkpoint, registered name) or an ``.onnx`` path.
    ``onnx_path(target)`` exports on first use (with every export check, the target's op audit
    included) into ``work_dir``.
    """

    def __init__(self, ref: str, work_dir: str | Path, model=None):
        self.ref = ref
        self.work_dir = Path(work_dir)
        self._model = model
        self._onnx = Path(ref) if ref.endswith(".onnx") else None
        self._exports: dict[str, Path] = {}
        if self._onnx is not None and not self._onnx.is_file():
            raise VitDeployError(f"{ref}: no such ONNX file")

    @property
    def name(self) -> str:
        return Path(self.ref).stem if self._onnx else Path(self.ref).name

    def torch_model(self):
        if self._model is None:
            if self._onnx is not None:
                raise VitDeployError(f"{self.ref}: the torch backend needs a model (directory, checkpoint or "
                                     "registered name), not an .onnx file")
            from vitdeploy.models.zoo import load_model

            self._model = load_model(self.ref)
        return self._model

    def onnx_path(self, target: str = "onnxruntime") -> Path:
        """The .onnx file given, or the model exported for ``target`` (once per target)."""
        if self._onnx is not None:
            return self._onnx
        if target not in self._exports:
            from vitdeploy.export.config import ExportConfig
            from vitdeploy.export.onnx import export_onnx

            path = self.work_dir / f"{_safe_name(self.name)}.{target}.onnx"
            export_onnx(self.torch_model(), path, ExportConfig(target=target))
            self._exports[target] = path
        return self._exports[target]

    def require_runnable(self, target: str) -> None:
        """Refuse a given .onnx whose quantization ``target`` cannot run (e.g. an ONNX Runtime INT8 graph,
        with unsigned zero points, handed to TensorRT); exports are audited for their target already."""
        from vitdeploy.export.check import qdq_violations, restricts_qdq

        if self._onnx is None or not restricts_qdq(target):
            return  # no need to read the file
        import onnx

        problems = qdq_violations(onnx.load(str(self._onnx)), target)
        if problems:
            more = f" (and {len(problems) - 1} more nodes)" if len(problems) > 1 else ""
            raise VitDeployError(f"{self._onnx}: {problems[0]}{more}; quantize for it with "
                                 f"`vitdeploy quantize --target {target}`")

    def sparsity(self) -> str | None:
        """The spec's ``sparsity`` ("2:4" or None), or ``SPARSITY_UNKNOWN`` for a bare .onnx."""
        if self._model is None and self.ref.endswith(".onnx"):
            return SPARSITY_UNKNOWN
        return self.torch_model().spec.sparsity

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        if self._model is not None or self._onnx is None:
            spec = self.torch_model().spec
            return (spec.in_chans, spec.img_size, spec.img_size)
        import onnx

        dims = onnx.load(str(self._onnx), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value for d in dims[1:])
        if len(shape) != 3 or not all(shape):
            raise VitDeployError(f"{self.ref}: expected one image input (batch, C, H, W) with static C, H, W")
        return shape


class Engine(Protocol):
    """A built model that runs batches."""

    backend: str
    device_name: str

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a float32 (B, C, H, W) batch; return float32 logits (B, classes) on the host."""

    def stage(self, batch: np.ndarray) -> Any:
        """Prepare ``batch`` for ``run`` (copy to the device, bind buffers); not timed."""

    def run(self, staged: Any) -> None:
        """Run one staged batch; may return before the device finishes (see ``synchronize``)."""

    def synchronize(self) -> None:
        """Wait until queued work is done (no-op on CPU)."""

    def metadata(self) -> dict:
        """Library versions, precision, threads, device: recorded with every measurement."""


class Backend(Protocol):
    """A way to run models, and the facts the other stages need about it."""

    name: str
    export_target: str
    """The ``vitdeploy export --target`` whose graph suits it (its op audit and fusion passes)."""
    default_device: str
    static_shapes: bool
    """True when an engine takes a dynamic batch axis only (every token count is its own engine)."""
    triton: tuple[str, str] | None
    """Its Triton Inference Server platform and model file name, if Triton serves its engines."""
    sparse_24: bool
    """True when it has 2:4 sparse kernels for weights that a spec records as 2:4."""
    int8_float_precision: str | None
    """The build precision of the float layers around an INT8 Q/DQ graph's quantized ones; None when it
    cannot run Q/DQ graphs."""

    def available(self) -> bool:
        """True when this backend can build here (library importable, device present)."""

    def unavailable_reason(self) -> str:
        """Why ``available()`` is False, phrased as what to install or change."""

    def build(self, source: ModelSource, config: BuildConfig) -> Engine:
        ...


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"

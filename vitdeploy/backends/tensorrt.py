"""TensorRT 10 backend: ONNX → serialized engine (cached) → execution on a CUDA stream.

**This backend has NOT been executed in this project's environment: TensorRT cannot be installed
there.** Every TensorRT call below was checked against TensorRT 10 sources and documentation
instead. ``docs/tensorrt10-api-notes.md`` collects them. The sources are:

- the 10.x Python bindings: NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` (Builder,
  IBuilderConfig, BuilderFlag, MemoryPoolType, IOptimizationProfile, ITimingCache, Runtime,
  ICudaEngine, IExecutionContext, ILogger) and the 10.x ``pyOnnx.cpp`` (OnnxParser,
  ParserError.node_name/node_operator);
- NVIDIA's Builder docs, which say ``EXPLICIT_BATCH`` is ignored in 10.0 because every network
  is explicit-batch: https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
- NVIDIA's 8.x → 10.x Python migration guide (name-based I/O, ``execute_async_v3``,
  ``build_serialized_network``):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-8x-to-10x-python-api-reference.html
- the NVIDIA/TensorRT samples (``samples/python/common_runtime.py``) and Polygraphy's TRT
  loaders (``tools/Polygraphy/polygraphy/backend/trt/{loader,config}.py``), which make the same
  calls in the same order.

``tests/backends/test_tensorrt.py`` runs the build and run sequences against a strict fake
``tensorrt`` module, which accepts only the attributes above.

The module is split in two:

- pure, CPU-testable parts: ``profile_shapes``, ``builder_flags``, ``engine_cache_key``,
  ``engine_metadata``, ``parser_error`` and ``build_error``;
- parts that call TensorRT: ``build_serialized_engine``, ``load_engine``, ``io_tensor_names``,
  ``output_shapes``, ``bind_tensors``, ``execute``, and ``TensorRTEngine``.

``tensorrt`` is imported inside functions only. Device memory and streams come from torch, so
neither pycuda nor cuda-python is needed.

Notes:

- fp32 engines keep TensorRT's default, which allows TF32 for fp32 matmuls and convolutions
  (``BuilderFlag.TF32`` is on by default and is not cleared here). On Ampere and newer GPUs,
  fp32 results can therefore differ from PyTorch fp32 by about 1e-3 relative.
- ``BuilderFlag.FP16``/``BF16`` are deprecated from TensorRT 10.12 in favour of strongly typed
  networks. They still work throughout 10.x and are removed in 11.
- 2:4 sparse kernels (``SPARSE_WEIGHTS``) need weights that are already 2:4 sparse, an fp16 or
  bf16 build, and an Ampere or newer GPU. TensorRT may still pick dense kernels where they are
  faster. The build log's "(Sparsity)" lines are kept in the engine metadata as evidence of what
  it chose.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitdeploy.backends._base import PRUNE_24_HINT, SPARSITY_UNKNOWN, BuildConfig, ModelSource
from vitdeploy.backends._cache import EngineCache, cache_key, file_sha256
from vitdeploy.errors import VitDeployError
from vitdeploy.io import write_bytes_atomic

log = logging.getLogger(__name__)

MIN_TENSORRT_MAJOR = 10
BF16_MIN_TENSORRT_MAJOR = 9
PRECISION_FLAGS = {"fp32": None, "fp16": "FP16", "bf16": "BF16"}
"""``trt.BuilderFlag`` name per precision; fp32 needs none (and keeps TF32, TensorRT's default)."""
SPARSE_FLAG = "SPARSE_WEIGHTS"
TORCH_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
                     "INT32": "int32", "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}
"""``trt.DataType`` name → torch dtype name (``trt.nptype`` has no bf16)."""
SPARSITY_LOG_MARKER = "(Sparsity)"
MAX_ERRORS_SHOWN = 3
INSTALL_HINT = "pip install vitdeploy[trt] on a machine with an NVIDIA GPU and TensorRT 10"

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Pure parts: no TensorRT, no GPU.
# ---------------------------------------------------------------------------------------------


def profile_shapes(input_name: str, input_shape: Shape, batch_sizes: tuple[int, ...]) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) shapes of the batch profile: min = smallest batch, opt = max = largest.

    ``input_shape`` is the network input's shape, batch first, -1 where dynamic. Only the batch may
    be dynamic, and a static batch must be the only batch size asked for.
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise VitDeployError("batch sizes must be whole numbers ≥ 1")
    batch, *rest = input_shape
    if not rest or any(dim < 1 for dim in rest):
        raise VitDeployError(f"input {input_name!r} has shape {list(input_shape)}: only its batch axis may be "
                             "dynamic; re-export the model with vitdeploy export")
    if batch != -1 and set(batch_sizes) != {batch}:
        raise VitDeployError(f"input {input_name!r} has a fixed batch of {batch}, so it cannot serve batch sizes "
                             f"{sorted(set(batch_sizes))}; re-export it with a dynamic batch axis")
    smallest, largest = min(batch_sizes), max(batch_sizes)
    return (smallest, *rest), (largest, *rest), (largest, *rest)


def builder_flags(config: BuildConfig, spec_sparsity: str | None, tensorrt_version: str | None = None) -> list[str]:
    """The ``trt.BuilderFlag`` names to set for ``config``.

    ``spec_sparsity`` is the model spec's ``sparsity`` ("2:4" or None), or ``SPARSITY_UNKNOWN``
    for a bare .onnx, whose weights TensorRT checks itself. ``tensorrt_version``
    (``trt.__version__``), when given, is checked against what the precision needs.
    """
    if config.precision not in PRECISION_FLAGS:
        raise VitDeployError(f"unknown precision {config.precision!r}: choose one of {', '.join(PRECISION_FLAGS)}")
    if config.precision == "bf16" and tensorrt_version and tensorrt_major(tensorrt_version) < BF16_MIN_TENSORRT_MAJOR:
        raise VitDeployError(f"bf16 engines need TensorRT {BF16_MIN_TENSORRT_MAJOR} or newer, this is "
                             f"{tensorrt_version}: pass --precision fp16")
    flags = [PRECISION_FLAGS[config.precision]] if PRECISION_FLAGS[config.precision] else []
    if config.sparse_weights:
        _check_sparse_request(config, spec_sparsity)
        flags.append(SPARSE_FLAG)
    return flags


def _check_sparse_request(config: BuildConfig, spec_sparsity: str | None) -> None:
    if spec_sparsity not in ("2:4", SPARSITY_UNKNOWN):
        raise VitDeployError("2:4 sparse kernels need 2:4 sparse weights, and this model's spec records none: "
                             f"prune with `{PRUNE_24_HINT}` first")
    if config.precision == "fp32":
        raise VitDeployError("TensorRT's 2:4 sparse kernels run in reduced precision: pass --precision fp16")


def tensorrt_major(version: str) -> int:
    """The major version of a ``trt.__version__`` string such as "10.16.0.72"."""
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise VitDeployError(f"cannot read the TensorRT version {version!r}") from None


def engine_cache_key(onnx_sha256: str, config: BuildConfig, gpu_name: str, compute_capability: str,
                     tensorrt_version: str) -> str:
    """Cache key of an engine: an engine only runs on the TensorRT version and GPU that built it."""
    return cache_key(onnx_sha256, config, gpu_id(gpu_name, compute_capability), {"tensorrt": tensorrt_version})


def gpu_id(gpu_name: str, compute_capability: str) -> str:
    return f"{gpu_name} (compute capability {compute_capability})"


def timing_cache_name(gpu_name: str, compute_capability: str, tensorrt_version: str) -> str:
    """File name of the tactic timing cache shared by every build on this GPU and TensorRT version."""
    identity = f"{gpu_id(gpu_name, compute_capability)}|tensorrt {tensorrt_version}"
    return f"timing-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.cache"


def engine_metadata(config: BuildConfig, flags: list[str], onnx_sha256: str, tensorrt_version: str,
                    gpu_name: str, compute_capability: str, sparsity_log: list[str]) -> dict:
    """What is written beside an engine: everything that made it and where it can run."""
    return {
        "backend": "tensorrt",
        "tensorrt": tensorrt_version,
        "gpu": gpu_name,
        "compute_capability": compute_capability,
        "build_config": config.to_dict(),
        "builder_flags": flags,
        "tf32": "allowed (TensorRT's default; BuilderFlag.TF32 not cleared)",
        "onnx_sha256": onnx_sha256,
        "sparsity_log": sparsity_log,
    }


def parser_error(onnx_path: str | Path, errors: list[Any]) -> VitDeployError:
    """A one-line ``VitDeployError`` from ``trt.ParserError`` objects, naming the failing ONNX nodes."""
    details = [_describe_parser_error(error) for error in errors[:MAX_ERRORS_SHOWN]]
    if len(errors) > MAX_ERRORS_SHOWN:
        details.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more")
    summary = "; ".join(details) or "no error reported"
    return VitDeployError(f"{onnx_path}: TensorRT cannot parse this ONNX model: {summary}. Export it with "
                          "`vitdeploy export --target tensorrt`, whose op audit lists what TensorRT 10 supports")


def _describe_parser_error(error: Any) -> str:
    description = _one_line(error.desc())
    if error.node() < 0:
        return description
    name = error.node_name() or f"#{error.node()}"
    return f"node {name} ({error.node_operator()}): {description}"


def build_error(onnx_path: str | Path, logged_errors: list[str]) -> VitDeployError:
    """A one-line ``VitDeployError`` for a failed ``build_serialized_network``."""
    summary = "; ".join(_one_line(message) for message in logged_errors[-MAX_ERRORS_SHOWN:]) or "no error logged"
    return VitDeployError(f"{onnx_path}: TensorRT could not build an engine: {summary}. A larger builder workspace "
                          "(BuildConfig.workspace_mb) or a smaller largest batch size may help")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def torch_dtype_name(trt_dtype: Any) -> str:
    """The torch dtype name for a ``trt.DataType``."""
    try:
        return TORCH_DTYPE_NAMES[trt_dtype.name]
    except KeyError:
        raise VitDeployError(f"engine input/output type {trt_dtype.name} is not supported by vitdeploy") from None


def check_batch(batch: int, batch_sizes: list[int]) -> None:
    """Raise ``VitDeployError`` unless the engine's profile covers ``batch``."""
    if not min(batch_sizes) <= batch <= max(batch_sizes):
        raise VitDeployError(f"batch {batch} is outside this engine's profile {min(batch_sizes)}..{max(batch_sizes)}: "
                             f"rebuild it with batch sizes that include {batch}")


# ---------------------------------------------------------------------------------------------
# Parts that call TensorRT (10.x Python API).
# ---------------------------------------------------------------------------------------------


def import_tensorrt():
    """``tensorrt``, checked to be version 10 or newer."""
    try:
        import tensorrt as trt
    except ImportError:
        raise VitDeployError(f"TensorRT is not installed ({INSTALL_HINT})") from None
    if tensorrt_major(trt.__version__) < MIN_TENSORRT_MAJOR:
        raise VitDeployError(f"TensorRT {trt.__version__} is too old: vitdeploy needs TensorRT {MIN_TENSORRT_MAJOR}")
    return trt


def capturing_logger(trt):
    """A ``trt.ILogger`` that forwards to Python logging and keeps errors and "(Sparsity)" lines."""
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.CRITICAL, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.INFO, severity.VERBOSE: logging.DEBUG}

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.sparsity: list[str] = []

        def log(self, level, message):
            python_level = levels.get(level, logging.DEBUG)
            if python_level >= logging.ERROR:
                self.errors.append(message)
            if SPARSITY_LOG_MARKER in message:
                self.sparsity.append(message)
            if log.isEnabledFor(python_level):
                log.log(python_level, "TensorRT: %s", message)

    return CapturingLogger()


def build_serialized_engine(onnx_path: Path, config: BuildConfig, flags: list[str],
                            timing_cache_path: Path) -> tuple[bytes, list[str]]:
    """Parse ``onnx_path`` and build a serialized engine; return it and the "(Sparsity)" log lines.

    The tactic timing cache is read from ``timing_cache_path`` (if present) and written back
    atomically after a successful build.
    """
    trt = import_tensorrt()
    logger = capturing_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # 0: explicit batch, the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise parser_error(onnx_path, [parser.get_error(index) for index in range(parser.num_errors)])
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    for flag in flags:
        builder_config.set_flag(getattr(trt.BuilderFlag, flag))
    add_batch_profile(builder, network, builder_config, config.batch_sizes)
    timing_cache = builder_config.create_timing_cache(_read_or_empty(timing_cache_path))
    if builder_config.set_timing_cache(timing_cache, ignore_mismatch=False) is False:
        log.warning("TensorRT rejected the timing cache %s; building without it", timing_cache_path)
    plan = builder.build_serialized_network(network, builder_config)
    if plan is None:
        raise build_error(onnx_path, logger.errors)
    write_bytes_atomic(timing_cache_path, bytes(builder_config.get_timing_cache().serialize()))
    return bytes(plan), logger.sparsity


def add_batch_profile(builder, network, builder_config, batch_sizes: tuple[int, ...]) -> None:
    """Add the optimization profile for the network's single image input, if its batch is dynamic."""
    if network.num_inputs != 1:
        raise VitDeployError(f"expected a model with one image input, this one has {network.num_inputs}")
    image = network.get_input(0)
    shape = tuple(image.shape)
    minimum, optimum, maximum = profile_shapes(image.name, shape, batch_sizes)
    if -1 not in shape:
        return
    profile = builder.create_optimization_profile()
    profile.set_shape(image.name, minimum, optimum, maximum)
    if builder_config.add_optimization_profile(profile) < 0:
        raise VitDeployError(f"TensorRT rejected the batch profile {minimum}..{maximum} for input {image.name!r}")


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def load_engine(plan: bytes, logger) -> tuple[Any, Any, Any]:
    """(runtime, engine, execution context) for a serialized engine."""
    trt = import_tensorrt()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise VitDeployError("TensorRT cannot load this engine: it was built by another TensorRT version or for "
                             "another GPU. Delete it from the engine cache to rebuild")
    return runtime, engine, engine.create_execution_context()


def io_tensor_names(engine) -> tuple[list[str], list[str]]:
    """(input names, output names) of an engine, in engine order."""
    trt = import_tensorrt()
    names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
    inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
    outputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT]
    return inputs, outputs


def output_shapes(context, input_name: str, input_shape: Shape, output_names: list[str]) -> dict[str, Shape]:
    """Set the input's shape on ``context``; return the resulting output shapes."""
    if context.set_input_shape(input_name, input_shape) is False:
        raise VitDeployError(f"TensorRT rejected input shape {list(input_shape)} for {input_name!r}")
    unresolved = context.infer_shapes()
    if unresolved:
        raise VitDeployError(f"TensorRT could not infer shapes; inputs left unspecified: {', '.join(unresolved)}")
    return {name: tuple(context.get_tensor_shape(name)) for name in output_names}


def bind_tensors(context, input_name: str, input_tensor, outputs: dict[str, Any]) -> None:
    """Point ``context`` at the input's shape and at every I/O tensor's device memory."""
    if context.set_input_shape(input_name, tuple(input_tensor.shape)) is False:
        raise VitDeployError(f"TensorRT rejected input shape {list(input_tensor.shape)} for {input_name!r}")
    for name, tensor in {input_name: input_tensor, **outputs}.items():
        if context.set_tensor_address(name, tensor.data_ptr()) is False:
            raise RuntimeError(f"TensorRT rejected the device address of tensor {name!r}")


def execute(context, stream_handle: int) -> None:
    """Enqueue one inference on the CUDA stream ``stream_handle``."""
    if context.execute_async_v3(stream_handle) is False:
        raise RuntimeError("TensorRT failed to enqueue the inference (see the TensorRT log)")


@dataclass
class StagedBatch:
    """An input on the GPU plus the output tensors the engine writes into."""

    input: Any
    outputs: dict[str, Any]


class TensorRTEngine:
    """A deserialized engine that runs on its own CUDA stream, ordered after torch's current stream."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, plan: bytes, build_metadata: dict):
        import torch

        trt = import_tensorrt()
        self._logger = capturing_logger(trt)
        self._runtime, self._engine, self._context = load_engine(plan, self._logger)
        inputs, self.output_names = io_tensor_names(self._engine)
        if len(inputs) != 1 or not self.output_names:
            raise VitDeployError(f"expected an engine with one input and an output, got inputs {inputs}")
        self.input_name = inputs[0]
        self._dtypes = {name: getattr(torch, torch_dtype_name(self._engine.get_tensor_dtype(name)))
                        for name in [self.input_name, *self.output_names]}
        self.build_metadata = build_metadata
        self.device_name = build_metadata["gpu"]
        self._stream = torch.cuda.Stream()
        self._bound: StagedBatch | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        staged = self.stage(batch)
        self.run(staged)
        self.synchronize()
        return staged.outputs[self.output_names[0]].float().cpu().numpy()

    def stage(self, batch: np.ndarray) -> StagedBatch:
        import torch

        check_batch(len(batch), self.build_metadata["build_config"]["batch_sizes"])
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to("cuda", self._dtypes[self.input_name])
        shapes = output_shapes(self._context, self.input_name, tuple(x.shape), self.output_names)
        outputs = {name: torch.empty(shape, dtype=self._dtypes[name], device="cuda") for name, shape in shapes.items()}
        self._bound = None
        return StagedBatch(x, outputs)

    def run(self, staged: StagedBatch) -> None:
        import torch

        if staged is not self._bound:
            bind_tensors(self._context, self.input_name, staged.input, staged.outputs)
            self._bound = staged
        current = torch.cuda.current_stream()
        self._stream.wait_stream(current)
        execute(self._context, self._stream.cuda_stream)
        current.wait_stream(self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def metadata(self) -> dict:
        import torch

        return {**self.build_metadata, "device": self.device, "device_name": self.device_name,
                "precision": self.build_metadata["build_config"]["precision"],
                "torch": torch.__version__, "cuda": torch.version.cuda}


class TensorRTBackend:
    name = "tensorrt"
    export_target = "tensorrt"
    default_device = "cuda"
    static_shapes = True
    triton = ("tensorrt_plan", "model.plan")
    sparse_24 = True
    int8_float_precision = "fp16"
    """LayerNorm, Softmax and GELU between the INT8 layers run in fp16, as TensorRT users build INT8 engines."""

    def __init__(self, cache: EngineCache | None = None):
        self.cache = cache or EngineCache()

    def available(self, device: str = "cuda") -> bool:
        return not self.unavailable_reason(device)

    def unavailable_reason(self, device: str = "cuda") -> str:
        if device != "cuda":
            return "TensorRT runs on NVIDIA GPUs only: pass --device cuda"
        try:
            import_tensorrt()
        except VitDeployError as exc:
            return str(exc)
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU: torch sees none (a CPU-only torch build, or no NVIDIA GPU/driver here)"
        return ""

    def build(self, source: ModelSource, config: BuildConfig) -> TensorRTEngine:
        """Build (or load from the engine cache) an engine for ``source``."""
        config.validate()
        reason = self.unavailable_reason(config.device)
        if reason:
            raise VitDeployError(f"backend tensorrt is not available here: {reason}")
        trt = import_tensorrt()
        flags = builder_flags(config, source.sparsity(), trt.__version__)
        onnx_path = source.onnx_path(self.export_target)
        onnx_sha256 = file_sha256(onnx_path)
        gpu_name, capability = gpu_identity()
        key = engine_cache_key(onnx_sha256, config, gpu_name, capability, trt.__version__)
        engine_path = self.cache.get(key)
        if engine_path is None:
            timing_cache = self.cache.root / timing_cache_name(gpu_name, capability, trt.__version__)
            plan, sparsity_log = build_serialized_engine(onnx_path, config, flags, timing_cache)
            metadata = engine_metadata(config, flags, onnx_sha256, trt.__version__, gpu_name, capability, sparsity_log)
            engine_path = self.cache.put(key, plan, metadata)
            log.info("built TensorRT engine %s", engine_path)
        return TensorRTEngine(engine_path.read_bytes(), self.cache.read_metadata(key))


def gpu_identity() -> tuple[str, str]:
    """(name, compute capability "major.minor") of the current CUDA device, as torch reports them."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


BACKEND = TensorRTBackend

"""ONNX Runtime backend: an ``InferenceSession`` over the checked ONNX export.

On CPU the session uses the CPU execution provider with ``intra_op_num_threads`` from the build
config and one inter-op thread, so thread counts in measurements mean what they say. On CUDA it
uses the TensorRT and CUDA execution providers of ``onnxruntime-gpu`` when they are present.

``session.run`` copies inputs in and outputs back to the host and returns only when the work is
done, so on either device a timed ``run`` includes those copies and ``synchronize`` has nothing
left to wait for.
"""

from __future__ import annotations

import numpy as np

from vitdeploy.backends._base import BuildConfig, ModelSource
from vitdeploy.export.ort_session import CPU_PROVIDER, open_session
from vitdeploy.hardware import device_name
from vitdeploy.errors import VitDeployError

CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"


class OnnxRuntimeEngine:
    """A single-input, single-output ``InferenceSession``."""

    backend = "onnxruntime"

    def __init__(self, session, config: BuildConfig, device_name: str):
        self.session = session
        self.config = config
        self.device = config.device
        self.device_name = device_name
        self.input_name = session.get_inputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, self.stage(batch))[0].astype(np.float32, copy=False)

    def stage(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def run(self, staged: dict[str, np.ndarray]) -> None:
        self.session.run(None, staged)

    def synchronize(self) -> None:
        """Nothing to wait for: ``session.run`` returns when its outputs are on the host."""

    def metadata(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": self.backend,
            "onnxruntime": ort.__version__,
            "providers": self.session.get_providers(),
            "threads": self.config.threads,
            "precision": self.config.precision,
            "device": self.device,
            "device_name": self.device_name,
        }


class OnnxRuntimeBackend:
    name = "onnxruntime"
    export_target = "onnxruntime"
    default_device = "cpu"
    static_shapes = False
    triton = ("onnxruntime_onnx", "model.onnx")
    sparse_24 = False
    int8_float_precision = "fp32"

    def available(self, device: str = "cpu") -> bool:
        return not self.unavailable_reason(device)

    def unavailable_reason(self, device: str = "cpu") -> str:
        try:
            import onnxruntime as ort
        except ImportError:
            return "ONNX Runtime is not installed (pip install onnxruntime)"
        if device == "cuda" and CUDA_PROVIDER not in ort.get_available_providers():
            return ("this ONNX Runtime has no CUDA execution provider: install onnxruntime-gpu "
                    "(in place of onnxruntime) on a machine with an NVIDIA GPU")
        return ""

    def build(self, source: ModelSource, config: BuildConfig) -> OnnxRuntimeEngine:
        import onnxruntime as ort

        config.validate()
        providers = execution_providers(config, ort.get_available_providers())
        session = open_session(source.onnx_path(self.export_target), config.threads, providers)
        return OnnxRuntimeEngine(session, config, device_name(config.device))


def execution_providers(config: BuildConfig, available: list[str]) -> list:
    """The providers (with options) for ``config``; ``VitDeployError`` if they cannot do it here.

    CPU runs fp32 only. CUDA needs onnxruntime-gpu; fp16 there goes through the TensorRT
    execution provider (``trt_fp16_enable``), since the CUDA provider runs the graph's own types.
    ``config.options["execution_provider"]`` narrows CUDA to one named provider.
    """
    if config.device == "cpu":
        if config.precision != "fp32":
            raise VitDeployError(f"ONNX Runtime on CPU runs fp32 only, not {config.precision}: "
                                 "pass --precision fp32 (or use --backend torch)")
        return [CPU_PROVIDER]
    if CUDA_PROVIDER not in available:
        raise VitDeployError("--device cuda with ONNX Runtime needs onnxruntime-gpu (CUDAExecutionProvider), "
                             "which is not installed here")
    wanted = config.options.get("execution_provider")
    gpu_providers = [wanted] if wanted else [TENSORRT_PROVIDER, CUDA_PROVIDER]
    gpu_providers = [name for name in gpu_providers if name in available]
    if not gpu_providers:
        raise VitDeployError(f"execution provider {wanted} is not available here; available: {', '.join(available)}")
    if config.precision == "bf16":
        raise VitDeployError("ONNX Runtime has no bf16 mode for fp32 models: pass --precision fp16 or fp32")
    if config.precision == "fp16":
        if TENSORRT_PROVIDER not in gpu_providers:
            raise VitDeployError("fp16 with ONNX Runtime needs its TensorrtExecutionProvider, which is not available "
                                 "here: pass --precision fp32 or use --backend tensorrt")
        return [(TENSORRT_PROVIDER, {"trt_fp16_enable": True}), CUDA_PROVIDER, CPU_PROVIDER]
    return [*gpu_providers, CPU_PROVIDER]


BACKEND = OnnxRuntimeBackend

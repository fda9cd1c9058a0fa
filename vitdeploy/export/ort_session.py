"""The one place ONNX Runtime sessions are set up, for the export checks and the engine backend alike."""

from __future__ import annotations

from pathlib import Path

from vitdeploy.errors import VitDeployError

CPU_PROVIDER = "CPUExecutionProvider"


def open_session(onnx_path: str | Path, threads: int | None, providers: list | None = None,
                 optimized_model_path: str | Path | None = None):
    """An ``InferenceSession`` (CPU unless ``providers`` say otherwise) with ``session_options``;
    ``VitDeployError`` when ONNX Runtime cannot load the file."""
    import onnxruntime as ort

    options = session_options(threads, optimized_model_path)
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=providers or [CPU_PROVIDER])
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise VitDeployError(f"{onnx_path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0]}") from None


def session_options(threads: int | None, optimized_model_path: str | Path | None = None):
    """ALL graph optimizations, ``threads`` intra-op (None: ONNX Runtime's default), 1 inter-op thread;
    ``optimized_model_path``, if given, is where ONNX Runtime saves the graph it optimised."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    options.log_severity_level = 3
    return options

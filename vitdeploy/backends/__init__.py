"""Engine backends behind one protocol (see ``base.py``); each is imported only when asked for."""

from __future__ import annotations

import importlib

from vitdeploy.backends.base import Backend, BuildConfig, Engine, ModelSource
from vitdeploy.errors import VitDeployError

_BACKENDS = {
    "onnxruntime": "vitdeploy.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "vitdeploy.backends.torch:TorchBackend",
    "tensorrt": "vitdeploy.backends.tensorrt:TensorRTBackend",
}

__all__ = ["Backend", "BuildConfig", "Engine", "ModelSource", "backend_names", "get_backend"]


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str, require_available: bool = True) -> Backend:
    """The backend called ``name``; a ``VitDeployError`` if unknown or (by default) unusable here."""
    if name not in _BACKENDS:
        raise VitDeployError(f"unknown backend {name!r}: choose one of {', '.join(_BACKENDS)}")
    module_name, class_name = _BACKENDS[name].split(":")
    backend = getattr(importlib.import_module(module_name), class_name)()
    if require_available and not backend.available():
        raise VitDeployError(f"backend {name} is not available here: {backend.unavailable_reason()}")
    return backend

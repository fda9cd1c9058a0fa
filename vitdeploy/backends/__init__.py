"""Engine backends behind one protocol (see ``_base.py``).

A backend is one module in this package, named as the backend, whose ``BACKEND`` is the class
implementing the protocol; modules are imported only when their backend is asked for. Modules
whose name starts with ``_`` are the shared protocol and engine cache. Installed packages add
backends through the entry-point group ``vitdeploy.backends``.
"""

from __future__ import annotations

from vitdeploy.backends._base import (
    DEVICES, MAX_BATCH, MAX_THREADS, PRECISIONS, Backend, BuildConfig, Engine, ModelSource,
)
from vitdeploy.backends._cache import ENGINE_SUFFIX, EngineCache
from vitdeploy.errors import VitDeployError
from vitdeploy.registry import Registry

BACKENDS: Registry[Backend] = Registry("backend", group="vitdeploy.backends", package=__name__,
                                       attribute="BACKEND", instances=True)

__all__ = [
    "BACKENDS", "DEVICES", "ENGINE_SUFFIX", "MAX_BATCH", "MAX_THREADS", "PRECISIONS", "Backend", "BuildConfig",
    "Engine", "EngineCache", "ModelSource", "get_backend",
]


def get_backend(name: str, require_available: bool = True) -> Backend:
    """The backend called ``name``; a ``VitDeployError`` if unknown or (by default) unusable here."""
    backend = BACKENDS.get(name)
    if require_available and not backend.available():
        raise VitDeployError(f"backend {name} is not available here: {backend.unavailable_reason()}")
    return backend

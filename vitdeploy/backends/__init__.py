"""Engine backends behind one protocol (see ``base.py``).

A backend is one module in this package, named as the backend, whose ``BACKEND`` is the class
implementing the protocol; modules are imported only when their backend is asked for.
"""

from __future__ import annotations

import importlib
import pkgutil

from vitdeploy.backends.base import Backend, BuildConfig, Engine, ModelSource
from vitdeploy.errors import VitDeployError

HELPER_MODULES = ("base", "cache")
"""Modules of this package that are not backends."""

__all__ = ["Backend", "BuildConfig", "Engine", "ModelSource", "backend_names", "get_backend"]


def backend_names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if info.name not in HELPER_MODULES)


def get_backend(name: str, require_available: bool = True) -> Backend:
    """The backend called ``name``; a ``VitDeployError`` if unknown or (by default) unusable here."""
    if name not in backend_names():
        raise VitDeployError(f"unknown backend {name!r}: choose one of {', '.join(backend_names())}")
    backend = importlib.import_module(f"{__name__}.{name}").BACKEND()
    if require_available and not backend.available():
        raise VitDeployError(f"backend {name} is not available here: {backend.unavailable_reason()}")
    return backend

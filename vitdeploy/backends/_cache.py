"""A content-addressed cache of built engines, with the metadata that made each one beside it.

A key is the sha256 over everything that changes what a builder produces: the ONNX file's bytes,
``BuildConfig.key()``, the device (name and, for GPUs, compute capability) and the versions of
the libraries that build and run it. Engines are written atomically (``vitdeploy.io``), engine
first and metadata second, and ``get`` only answers for entries whose metadata exists, so a crash
mid-write never yields a half-written engine.

The root is ``~/.cache/vitdeploy/engines`` unless the ``VITDEPLOY_CACHE`` environment variable
names another directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from vitdeploy.backends._base import BuildConfig
from vitdeploy.errors import VitDeployError
from vitdeploy.io import write_bytes_atomic, write_json_atomic

CACHE_ENV = "VITDEPLOY_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/vitdeploy/engines")
ENGINE_SUFFIX = ".engine"
METADATA_SUFFIX = ".json"

_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def default_cache_root() -> Path:
    """``$VITDEPLOY_CACHE`` if set, else ``~/.cache/vitdeploy/engines``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT).expanduser()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise VitDeployError(f"{path}: cannot read it ({exc.strerror})") from None
    return digest.hexdigest()


def cache_key(onnx_sha256: str, config: BuildConfig, device_name: str, versions: dict[str, str]) -> str:
    """The sha256 over the model bytes' digest, the build config, the device and library versions."""
    fields = {
        "onnx_sha256": onnx_sha256,
        "build_config": config.key(),
        "device": device_name,
        "versions": dict(sorted(versions.items())),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class EngineCache:
    """Engines on disk, one ``<key>.engine`` and one ``<key>.json`` per entry."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def engine_path(self, key: str) -> Path:
        return self.root / f"{_checked(key)}{ENGINE_SUFFIX}"

    def metadata_path(self, key: str) -> Path:
        return self.root / f"{_checked(key)}{METADATA_SUFFIX}"

    def get(self, key: str) -> Path | None:
        """The engine file for ``key``, or None when it is not (completely) cached."""
        engine, metadata = self.engine_path(key), self.metadata_path(key)
        return engine if engine.is_file() and metadata.is_file() else None

    def put(self, key: str, engine: bytes, metadata: dict) -> Path:
        """Store ``engine`` and its metadata atomically; return the engine's path."""
        path = self.engine_path(key)
        write_bytes_atomic(path, engine)
        write_json_atomic(self.metadata_path(key), metadata)
        return path

    def read_metadata(self, key: str) -> dict:
        """The metadata stored with ``key``'s engine."""
        path = self.metadata_path(key)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise VitDeployError(f"{path}: unreadable engine metadata ({exc}); delete it to rebuild") from None


def _checked(key: str) -> str:
    if not _KEY_PATTERN.fullmatch(key):
        raise ValueError(f"not an engine cache key: {key!r}")
    return key

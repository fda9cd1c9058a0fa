"""Atomic file output: write to a temporary file in the target directory, then rename.

A crash or a failed check never leaves a half-written artifact behind, and an existing file
is only replaced once its successor is complete. A directory is only ever replaced when it holds
nothing but files the caller declares as its own, so a mistyped ``--out`` cannot wipe user data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from vitdeploy.errors import VitDeployError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``."""
    target = Path(target)
    if target.is_dir():
        raise VitDeployError(f"{target} is a directory; give a file name")
    tmp_path = _mkstemp(target, suffix)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, owned_names: Iterable[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target``.

    An existing ``target`` is replaced only if every entry in it is one of ``owned_names``
    (the files this kind of directory holds); anything else raises ``VitDeployError``.
    """
    target = Path(target)
    _check_replaceable(target, set(owned_names))
    _make_parent(target)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp_dir
        os.chmod(tmp_dir, 0o777 & ~_UMASK)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, backup / target.name)
            os.replace(tmp_dir, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp_dir, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(target, (json.dumps(obj, indent=2) + "\n").encode())


def _check_replaceable(target: Path, owned: set[str]) -> None:
    if target.is_file():
        raise VitDeployError(f"{target} is a file; give a directory name")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in owned)
        if foreign:
            raise VitDeployError(f"{target} already holds other files ({', '.join(foreign[:3])}); "
                                 "choose a new or empty directory")


def _make_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VitDeployError(f"cannot write {target}: a parent of it is a file") from None
    except PermissionError:
        raise VitDeployError(f"cannot write {target}: permission denied") from None


def _mkstemp(target: Path, suffix: str) -> Path:
    _make_parent(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except PermissionError:
        raise VitDeployError(f"cannot write {target}: permission denied") from None
    os.close(fd)
    return Path(tmp)

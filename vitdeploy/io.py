"""Atomic file output: write to a temporary file in the target directory, then rename.

A crash or a failed check never leaves a half-written artifact behind, and an existing file
is only replaced once its successor is complete. A directory is only ever replaced when it holds
nothing but files the caller declares as its own, so a mistyped ``--out`` cannot wipe user data.
Several outputs of one command are staged together (``atomic_paths``) and moved into place only
when all of them are complete. Parent directories created for an output that then fails are
removed again. Temporaries carry the writer's process id, so ones left by a killed process are
removed by the next write beside them. An OS error while writing (permissions, read-only file
system, full disk) becomes an ``OutputError``: one line naming the output. In a torchrun job only
the main process writes: the others stage into a private temporary directory that is discarded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from vitdeploy.errors import VitDeployError

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_TEMP_SUFFIXES = (".tmp", ".old")
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO,
                  errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EMLINK, errno.EXDEV}


class OutputError(VitDeployError, OSError):
    """An output could not be written; still an ``OSError`` for library callers."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``."""
    with atomic_paths(target, suffixes=(suffix,)) as (tmp_path,):
        yield tmp_path


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike, suffixes: Iterable[str] = ()) -> Iterator[tuple[Path, ...]]:
    """Temporary paths beside each of ``targets``; on success all are moved into place together.

    Every target is checked and staged before any is replaced, so a failure (a check, an
    unwritable second output) leaves every previous output as it was.
    """
    targets = tuple(Path(t) for t in targets)
    suffixes = tuple(suffixes) or ("",) * len(targets)
    if not _main_process():
        with tempfile.TemporaryDirectory() as scratch:
            yield tuple(Path(scratch) / f"{i}-{t.name}{s}" for i, (t, s) in enumerate(zip(targets, suffixes)))
        return
    for target in targets:
        if target.is_dir():
            raise VitDeployError(f"{target} is a directory; give a file name")
    with _created_parents(targets), _naming_output(*targets):
        tmp_paths = tuple(_mkstemp(target, suffix) for target, suffix in zip(targets, suffixes))
        try:
            yield tmp_paths
            for tmp_path in tmp_paths:
                os.chmod(tmp_path, 0o666 & ~_UMASK)
            _replace_all(tmp_paths, targets)
        finally:
            for tmp_path in tmp_paths:
                tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, owned_names: Iterable[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target``.

    An existing ``target`` is replaced only if every entry in it is one of ``owned_names``
    (the files this kind of directory holds); anything else raises ``VitDeployError``.
    """
    _check_replaceable(Path(target), set(owned_names))
    if not _main_process():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
        return
    target = Path(target).absolute()
    with _created_parents((target,)), _naming_output(target):
        remove_stale_temporaries(target)
        tmp_dir = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
        try:
            yield tmp_dir
            os.chmod(tmp_dir, 0o777 & ~_UMASK)
            if target.exists():
                _swap_dir(tmp_dir, target)
            else:
                os.replace(tmp_dir, target)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(target, finite_json(obj, str(target)).encode())


def finite_json(obj: Any, where: str) -> str:
    """``obj`` as indented JSON text; one holding NaN or infinite numbers is refused, so never written."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise VitDeployError(f"{where}: the report holds NaN or infinite values; nothing was written") from None


def check_output_files(*targets: str | os.PathLike) -> None:
    """Refuse, before any work starts, output files that could not be written (a directory in the way,
    a parent that is a file, an unwritable directory)."""
    for target in map(Path, targets):
        if target.is_dir():
            raise VitDeployError(f"{target} is a directory; give a file name")
        _check_parents(target)


def check_output_dir(target: str | os.PathLike, owned_names: Iterable[str]) -> None:
    """Refuse, before any work starts, an output directory ``atomic_dir`` would not replace."""
    _check_replaceable(Path(target), set(owned_names))
    _check_parents(Path(target))


def remove_stale_temporaries(target: Path) -> None:
    """Remove temporaries beside ``target`` left by writers that no longer run (e.g. killed with -9)."""
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            if entry.name.startswith(f".{target.name}.") and entry.name.endswith(_TEMP_SUFFIXES) \
                    and not _writer_alive(entry.name.removeprefix(f".{target.name}.")):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _swap_dir(tmp_dir: Path, target: Path) -> None:
    """Replace the directory ``target`` with ``tmp_dir``; if that fails, ``target`` stays as it was."""
    backup = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".old", dir=target.parent))
    moved = backup / target.name
    try:
        os.replace(target, moved)
        os.replace(tmp_dir, target)
    except BaseException:
        if moved.exists() and not target.exists():
            os.replace(moved, target)
        raise
    finally:
        if not moved.exists() or target.exists():
            shutil.rmtree(backup, ignore_errors=True)


def _replace_all(tmp_paths: tuple[Path, ...], targets: tuple[Path, ...]) -> None:
    """Move every staged file onto its target; if one move fails, put back the ones already moved."""
    backups: list[Path | None] = []
    moved = 0
    try:
        backups.extend(_backup(target) for target in targets)
        for tmp_path, target in zip(tmp_paths, targets):
            os.replace(tmp_path, target)
            moved += 1
    except BaseException:
        for target, backup in reversed(list(zip(targets, backups))[:moved]):
            if backup:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
        raise
    finally:
        for backup in filter(None, backups):
            backup.unlink(missing_ok=True)


def _backup(target: Path) -> Path | None:
    """A hard link to the existing ``target`` (to restore it), or None when there is none."""
    if not target.exists():
        return None
    backup = _mkstemp(target, ".old")
    backup.unlink()
    os.link(target, backup)
    return backup


def _check_replaceable(target: Path, owned: set[str]) -> None:
    cwd = Path.cwd()
    if target.resolve() in (cwd, *cwd.parents):
        raise VitDeployError(f"{target} is the current directory (or holds it); give a new directory name")
    if target.is_file():
        raise VitDeployError(f"{target} is a file; give a directory name")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in owned)
        if foreign:
            raise VitDeployError(f"{target} already holds other files ({', '.join(foreign[:3])}); "
                                 "choose a new or empty directory")


def _check_parents(target: Path) -> None:
    """The nearest existing parent of ``target`` is a directory that accepts new files (probed)."""
    existing = next(p for p in target.absolute().parents if p.exists())
    if not existing.is_dir():
        raise VitDeployError(f"cannot write {target}: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=existing)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot write {target}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def _created_parents(targets: tuple[Path, ...]) -> Iterator[None]:
    """Create the missing parents of ``targets``; remove them again if the block fails."""
    created: list[Path] = []
    try:
        for target in targets:
            created += _make_parent(target)
        yield
    except BaseException:
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _make_parent(target: Path) -> list[Path]:
    """Create ``target``'s missing parent directories; return them, outermost first."""
    missing = [p for p in reversed(target.absolute().parents) if not p.exists()]
    for directory in missing:
        try:
            directory.mkdir()
        except (FileExistsError, NotADirectoryError):
            raise VitDeployError(f"cannot write {target}: a parent of it is a file") from None
        except OSError as exc:
            raise OutputError(exc.errno, f"cannot write {target}: {exc.strerror}") from None
    if not target.parent.is_dir():
        raise VitDeployError(f"cannot write {target}: a parent of it is a file")
    return missing


@contextlib.contextmanager
def _naming_output(*targets: Path) -> Iterator[None]:
    """Turn an OS error while writing ``targets`` into one ``OutputError`` line naming them."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        raise OutputError(exc.errno, f"cannot write {', '.join(map(str, targets))}: {exc.strerror or exc}") from None


def _mkstemp(target: Path, suffix: str) -> Path:
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    return Path(tmp)


def _main_process() -> bool:
    """Whether this process writes: always, unless a torchrun session made it a secondary rank
    (``vitdeploy.runtime`` is only looked up, so writing files never imports torch)."""
    runtime = sys.modules.get("vitdeploy.runtime")
    return runtime is None or runtime.current().main


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


def _writer_alive(tail: str) -> bool:
    """Whether the process whose id starts ``tail`` (``PID-random…``) still runs; True if unknown."""
    pid = tail.split("-", 1)[0]
    if not pid.isdigit() or "-" not in tail:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True

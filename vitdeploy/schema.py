"""Validation of every JSON file vitdeploy reads (specs, recipes, latency tables, build configs).

Settings are plain dataclasses marked ``@schema``; ``parse`` validates JSON into them with
pydantic in strict mode: wrong types, unknown keys and non-finite numbers are refused, and the
first problem becomes one ``VitDeployError`` line naming the file and the field. Ranges of one
field are ``Annotated[..., pydantic.Field(ge=..., le=...)]`` on the field; checks that involve
several fields stay in each dataclass's ``validate()``, which ``parse`` calls and which starts with
``check_fields(self)`` where the ranges live in the schema. ``validated`` checks a dataclass built
from command-line flags the same way, naming the flag; ``validate()`` names fields through
``named``, so its own messages name the flag there and the JSON key in a file.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from vitdeploy.errors import VitDeployError

T = TypeVar("T")

STRICT_JSON = pydantic.ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
FOREIGN_JSON = pydantic.ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)
_FIELD_NAMES: contextvars.ContextVar[Callable[[str], str]] = contextvars.ContextVar("field_names", default=str)
"""How the settings being checked name their fields: the JSON key unless ``validated`` says otherwise."""
MAX_JSON_BYTES = 64 * 1024 * 1024
"""Larger files are refused before parsing (a spec or recipe is a few KB, a latency table < 1 MB)."""


def schema(cls: type[T]) -> type[T]:
    """Mark a dataclass as read from JSON: strict types, no unknown keys, finite numbers."""
    return pydantic.with_config(STRICT_JSON)(cls)


def foreign_schema(cls: type[T]) -> type[T]:
    """Mark a dataclass as read from another tool's JSON (e.g. a Hugging Face config.json): the
    fields it declares are strict and finite; keys it does not declare are ignored."""
    return pydantic.with_config(FOREIGN_JSON)(cls)


def parse(cls: type[T], source: str | bytes | Any, where: str) -> T:
    """``source`` (JSON text, or already-decoded JSON data) validated into ``cls``.

    ``where`` names the input in the message (a path, or e.g. "recipe x.json: variant 2").
    """
    text = source if isinstance(source, (str, bytes)) else json.dumps(source)
    if len(text) > MAX_JSON_BYTES:
        raise VitDeployError(f"{where}: {len(text) / 2**20:.0f} MiB is too large for a vitdeploy JSON file")
    try:
        value = pydantic.TypeAdapter(cls).validate_json(text)
    except pydantic.ValidationError as exc:
        raise VitDeployError(f"{where}: {describe(exc)}") from None
    validate = getattr(value, "validate", None)
    if not callable(validate):
        return value
    try:
        return validate()
    except VitDeployError as exc:
        message = str(exc)
        raise VitDeployError(message if message.startswith(where) else f"{where}: {message}") from None


def check_fields(value: Any, name: Callable[[str], str] | None = None) -> None:
    """Check a settings dataclass built in code (from flags, or by a library caller) against its
    schema like parsed JSON: types, one-field ranges, finite numbers. ``name`` turns a field's path
    into what the user wrote, e.g. ``--max-drop`` for ``max_drop``; by default as ``named`` does."""
    name = name or _FIELD_NAMES.get()
    try:
        pydantic.TypeAdapter(type(value)).validate_json(json.dumps(dataclasses.asdict(value)))
    except pydantic.ValidationError as exc:
        raise VitDeployError(describe(exc, name)) from None


def validated(value: T, name: Callable[[str], str] = str) -> T:
    """``check_fields`` naming fields through ``name``, then the dataclass's own ``validate()``, whose
    messages name fields the same way (``named``)."""
    check_fields(value, name)
    validate = getattr(value, "validate", None)
    if not callable(validate):
        return value
    with _naming_fields(name):
        return validate()


def named(field: str) -> str:
    """A settings field as the user wrote it, for a ``validate()`` message: ``--max-drop`` while
    ``validated`` checks command-line settings, ``max_drop`` in a JSON file or a library call."""
    return _FIELD_NAMES.get()(field)


@contextlib.contextmanager
def _naming_fields(name: Callable[[str], str]):
    token = _FIELD_NAMES.set(name)
    try:
        yield
    finally:
        _FIELD_NAMES.reset(token)


def flag_name(field: str) -> str:
    """The command-line flag of a settings field: ``max_drop`` → ``--max-drop``."""
    return "--" + field.replace("_", "-")


def read_json_bytes(path: Path) -> bytes:
    """A JSON file's bytes, refused in one line when it cannot be read or is larger than
    ``MAX_JSON_BYTES`` (read no further than that: /dev/zero is not read to the end)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise VitDeployError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_JSON_BYTES:
        raise VitDeployError(f"{path}: more than {MAX_JSON_BYTES // 2**20} MiB, too large for a vitdeploy JSON file")
    return data


def describe(exc: pydantic.ValidationError, name: Callable[[str], str] = str) -> str:
    """The first error of ``exc`` as 'field.path: message' (the path passed through ``name``), with a
    count of the rest."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    location = name(".".join(str(part) for part in first["loc"])) if first["loc"] else ""
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if first["type"] == "json_invalid":
        return f"not valid JSON: {first['msg']}{more}"
    return f"{location or 'top level'}: {first['msg']}{more}"

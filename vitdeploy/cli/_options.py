"""Command-line options built from a settings dataclass's fields (name, type and default)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any


from vitdeploy.backends import MAX_BATCH, MAX_THREADS

MAX_DIGITS = 18
"""Longer whole numbers are refused before conversion (no option needs one above 10¹⁸)."""


def non_empty(text: str) -> str:
    """A text option that must say something: an empty path or name is refused, not read as "not given"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a value")
    return text


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def whole_number(text: str) -> int:
    digits = text.strip().removeprefix("-")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= MAX_DIGITS):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def whole_number_in(low: int, high: int | None = None):
    """An option type: a whole number in ``low..high`` (no upper bound when ``high`` is None)."""
    def parse(text: str) -> int:
        value = whole_number(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: give a whole number "
                                             + (f"in {low}..{high}" if high is not None else f"≥ {low}"))
        return value

    parse.__name__ = "whole number"
    return parse


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """An option type: a finite number between ``low`` and ``high`` (bounds excluded where ``*_open``)."""
    def parse(text: str) -> float:
        value = finite_float(text)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: give a number in "
                                             f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = whole_number_in(1)
threads_count = whole_number_in(1, MAX_THREADS)
batch_size = whole_number_in(1, MAX_BATCH)


def whole_number_list(low: int, high: int, what: str):
    """An option type: '1,8,32' → (1, 8, 32), each in ``low..high``; ``what`` names the values in errors."""
    def parse(text: str) -> tuple[int, ...]:
        values = int_list(text)
        if min(values) < low or max(values) > high:
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be in {low}..{high}")
        return values

    parse.__name__ = "list"
    return parse


batch_list = whole_number_list(1, MAX_BATCH, "batch sizes")


def int_list(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isascii() and part.isdigit() and len(part) <= MAX_DIGITS for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated whole numbers such as 3,6,9")
    return tuple(int(part) for part in parts)


def name_list(text: str) -> tuple[str, ...]:
    """'a, b' → ('a', 'b')."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated names")
    return names


def add_config_options(parser: argparse.ArgumentParser, config: type, helps: dict[str, str],
                       choices: dict[str, tuple] | None = None, defaults: dict[str, Any] | None = None) -> None:
    """Add ``--field-name`` for each field in ``helps``, typed and defaulted from ``config``.

    A bool field that defaults to True becomes ``--no-field-name``.
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)
    choices, defaults = choices or {}, defaults or {}
    for name, help_text in helps.items():
        default = defaults.get(name, _default(fields[name]))
        flag = "--" + name.replace("_", "-")
        if hints[name] is bool:
            negative = default is True
            parser.add_argument(("--no-" + name.replace("_", "-")) if negative else flag, dest=name,
                                action="store_false" if negative else "store_true",
                                help=f"turn off (on by default): {help_text}" if negative else help_text)
            continue
        shown = "" if default is None else " (default: %(default)s)"
        parser.add_argument(flag, dest=name, type=_parser_for(hints[name]), default=default,
                            choices=choices.get(name), help=help_text + shown)


def config_values(args: argparse.Namespace, helps: dict[str, str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in helps}


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _parser_for(hint: Any):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        return name_list if typing.get_args(hint)[0] is str else int_list
    return {float: finite_float, int: whole_number}.get(hint, str)

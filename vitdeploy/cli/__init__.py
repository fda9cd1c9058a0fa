"""The ``vitdeploy`` command line: one module per command, each with a ``register(subparsers)``.

A command is added by dropping a module into this package (modules starting with ``_`` are
helpers), or by an installed package's entry point in the group ``vitdeploy.commands`` naming its
``register`` function. Command modules import their library code inside the run functions, so ``--help``
stays fast. User errors (``VitDeployError``) print one line on stderr and exit with code 2;
so do the OS's refusals to read or write a named file and running out of memory. SIGINT and
SIGTERM unwind the command (its ``finally`` blocks remove temporaries), print
``vitdeploy: interrupted`` and exit with 130 / 143.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import typing

from vitdeploy.cli._common import print_notes
from vitdeploy.cli._runtime import runtime_session
from vitdeploy.errors import VitDeployError
from vitdeploy.registry import Registry

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

COMMANDS: Registry[typing.Callable] = Registry("command", group="vitdeploy.commands", package=__name__,
                                               attribute="register")
"""Each command module's ``register(subparsers)``, by module name."""


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    received: list[int] = []
    with _signals_raise(received):
        try:
            with runtime_session(args):
                code = args.run(args) or 0
            print_notes(args)
            return code
        except BaseException as exc:  # noqa: BLE001 - each kind is answered or re-raised in _answer
            return _answer(exc, received)


def _answer(exc: BaseException, received: list[int]) -> int:
    """Exit code (and one stderr line) for an exception that ended a command; re-raise bugs."""
    if received or isinstance(exc, KeyboardInterrupt):
        # After a signal, whatever it interrupted (an import, a C call) may fail in its own way.
        print("vitdeploy: interrupted", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    if isinstance(exc, BrokenPipeError):  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    message = _user_error_message(exc)
    if message is None:
        raise exc
    print(f"vitdeploy: error: {message}", file=sys.stderr)
    return getattr(exc, "exit_code", 2)


def _user_error_message(exc: BaseException) -> str | None:
    if isinstance(exc, VitDeployError):
        return " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, MemoryError):
        return "out of memory: the inputs or options ask for more than this machine has (check sizes and --batch)"
    return None


@contextlib.contextmanager
def _signals_raise(received: list[int]) -> typing.Iterator[None]:
    """While the command runs, SIGINT/SIGTERM raise ``Interrupted`` (recorded in ``received``)."""
    def on_signal(signum, frame):
        received.append(signum)
        raise Interrupted(signum)

    if _in_main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    else:
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line, ``vitdeploy: error: ...`` with exit 2, like every other user error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"vitdeploy: error: {self.prog.removeprefix('vitdeploy ')}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="vitdeploy",
        description="Prune, export, build, benchmark and serve Vision Transformers for TensorRT, ONNX Runtime "
                    "and PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrorParser)
    for register in COMMANDS.items().values():
        register(sub)
    return parser

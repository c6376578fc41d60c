"""How every command fails: ``retrofit <command>: <message>`` on one line, exit code 2.

A traceback is for the developer, not the user who mistyped a path: commands run their work
through :func:`run_command`, which turns any exception into one line on stderr (the message names
the file, the option or what to do) and exit code 2. ``--debug`` anywhere on the command line or
``RETROFIT_DEBUG=1`` shows the full traceback instead. Warnings print as
``retrofit <command>: warning: <message>``, one line each. Ctrl-C (SIGINT) prints
``retrofit <command>: interrupted`` and exits 130; SIGTERM is handled the same way (exit 143), so
the command's ``finally`` blocks (sandbox workers, temporary files) run.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence

__all__ = ["CommandError", "debug_requested", "error_line", "run_command"]

DEBUG_FLAG = "--debug"
DEBUG_ENV = "RETROFIT_DEBUG"


class CommandError(Exception):
    """A failure whose message is already the one line to show (no exception type prefix)."""


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether the user asked for tracebacks (``--debug`` or ``RETROFIT_DEBUG=1``)."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def error_line(command: str, error: BaseException) -> str:
    """``retrofit <command>: <message>``: the first line of the message, with the exception type
    where it adds information (not for ValueError / CommandError, whose text says it all)."""
    message = str(error).strip() or type(error).__name__
    message = " ".join(message.splitlines()[0].split()) if "\n" in message else message
    if isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    if not isinstance(error, (ValueError, CommandError, KeyError)):
        message = f"{type(error).__name__}: {message}"
    if isinstance(error, KeyError):
        message = message.strip("'\"")
    return f"retrofit {command}: {message}"


def _one_line_warning(command: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ``retrofit <command>: warning: <message>``."""

    def show(message: Warning | str, category: type[Warning], *_args: object, **_kwargs: object) -> None:
        text = " ".join(str(message).split())
        print(f"retrofit {command}: warning: {text}", file=sys.stderr)

    return show


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signum)


def run_command(command: str, main: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run ``main(argv)`` (``--debug`` removed) and return its exit code; failures become one line.

    Returns 2 for any exception (``SystemExit`` from argparse keeps its own code), 130 for Ctrl-C
    and 143 for SIGTERM.
    """
    argv = list(argv)
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: leave SIGTERM alone
        previous = None
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _one_line_warning(command)
            return int(main(argv) or 0)
    except KeyboardInterrupt as interrupt:
        terminated = bool(interrupt.args) and interrupt.args[0] == signal.SIGTERM
        print(f"retrofit {command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except SystemExit:
        raise
    except Exception as error:
        if debug:
            raise
        print(error_line(command, error), file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

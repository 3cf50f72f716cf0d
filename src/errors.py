"""User-facing errors: one line, naming the file, what is wrong and the fix.

Entry points wrap their ``main`` in :func:`run_cli`, which turns a
:class:`UserError` into that one line on stderr and exit code 2.
"""
from __future__ import annotations

import signal
import sys
from typing import Callable

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input from the user (data, config, checkpoint): message is one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, ``timeout``, ``kill``): handled like Ctrl-C, work saved first."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for a one-line error."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process that SIGTERM ended


def one_line(err: UserError) -> str:
    """The message of ``err`` as one line.

    A UserError raised in a DataLoader worker process reaches the main process re-raised by torch with
    the message "Caught UserError in DataLoader worker process N.", the worker's traceback, and the
    original ``src.errors.UserError: message`` as its last line: that last message is what is kept.
    """
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    last = lines[-1].strip()
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else " ".join(ln.strip() for ln in lines)


def _terminated(signum, frame) -> None:
    raise Terminated("SIGTERM")


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit: 0 on success, 2 with one line on a UserError, 143 on SIGTERM.

    SIGTERM raises :class:`Terminated` from the start, before the heavy imports, so that a process
    stopped while it starts exits as it does later (143, one line); training installs its own
    handler (src/training/signals.py) that stops between two steps and saves first."""
    try:
        signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        code = main()
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)

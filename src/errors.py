"""User-facing errors: one line, naming the file, what is wrong and the fix.

Entry points wrap their ``main`` in :func:`run_cli`, which turns a
:class:`UserError` into that one line on stderr and exit code 2.
"""
from __future__ import annotations

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


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit: 0 on success, 2 with one line on a UserError."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)

"""SIGTERM (cluster preemption, ``timeout``, ``kill``) handled like Ctrl-C: the run saves and stops."""
from __future__ import annotations

import signal

from src.errors import Terminated


class TerminationRequest:
    """SIGTERM (cluster preemption, ``timeout``, ``kill``) handled like Ctrl-C.

    Inside the batch loop the signal only sets a flag, checked before each
    batch, so the run stops between two optimizer steps and last.pt resumes
    exactly; anywhere else (dev evaluation, set-up) it raises at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self.in_batch_loop = False
        self._previous = None

    def __enter__(self) -> "TerminationRequest":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if not self.in_batch_loop:
            raise Terminated("SIGTERM")

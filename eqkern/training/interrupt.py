"""Ctrl-C during training: the first asks to stop after the running batch (the engine then saves
the mid-epoch position), a second one stops at once."""

from __future__ import annotations

import signal
import threading
from typing import Callable

__all__ = ["StopRequest"]


class StopRequest:
    """A context manager installing the SIGINT handler (main thread only); ``requested`` says
    whether a stop was asked for."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.requested = False
        self.log = log
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, self._old or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        self.log("Ctrl-C: stopping after this batch and saving a checkpoint (again to stop now)")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> bool:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False

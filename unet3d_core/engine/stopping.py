"""Stopping on SIGTERM / SIGINT at a step boundary, with a checkpoint.

A cluster's scheduler sends SIGTERM before it kills a job; Ctrl-C sends
SIGINT. Either sets a flag that the training loop reads after each step; the
loop then saves a checkpoint and returns normally. A second SIGINT stops at
once (KeyboardInterrupt), for a user who does not want to wait for the step.
"""
from __future__ import annotations

import signal
from typing import Optional


class StopRequest:
    """Install with ``with StopRequest() as stop:``; read ``stop.signal_name``."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.signal_name: Optional[str] = None
        self._previous = {}

    def _handle(self, number, frame):
        name = signal.Signals(number).name
        if self.signal_name == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt
        self.signal_name = self.signal_name or name

    def __enter__(self) -> "StopRequest":
        for name in self.SIGNALS:
            number = getattr(signal, name)
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread: leave the defaults alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


"""Progress output for long work: a bar on a terminal, a few plain lines otherwise (logs, CI)."""
from __future__ import annotations

import sys
import time


class Progress:
    """Report ``done`` of ``total`` items; call :meth:`update` after each item."""

    def __init__(self, label: str, total: int, stream=None):
        self.label = label
        self.total = max(int(total), 1)
        self.stream = stream or sys.stdout
        self.started = time.time()
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_tenth = -1

    def update(self, done: int, item: str = "") -> None:
        elapsed = time.time() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.interactive:
            width = 30
            filled = int(width * done / self.total)
            self.stream.write("\r{} [{}{}] {}/{}  {:.1f}/s  {}".format(
                self.label, "#" * filled, "." * (width - filled), done, self.total, rate, item.ljust(24)))
            if done >= self.total:
                self.stream.write("\n")
        else:
            tenth = int(10 * done / self.total)
            if tenth == self._last_tenth and done < self.total:
                return
            self._last_tenth = tenth
            self.stream.write("{} {}/{} ({:.1f}/s) {}\n".format(self.label, done, self.total, rate, item))
        self.stream.flush()

"""Progress output for long work, on standard error so standard output keeps only results.

On a terminal: a ``tqdm`` bar redrawn in place. Elsewhere (logs, CI, pipes): a few
plain, newline-terminated lines of the same numbers, one per tenth of the work at
most and never closer together than ``LOG_INTERVAL`` seconds, then one line when
the work is done; a run that ends early (an error) leaves no partial lines.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

# Non-terminal output: the least time between two progress lines before the last one.
LOG_INTERVAL = 10.0
# Terminal output: the least time between two redraws of the bar.
REDRAW_INTERVAL = 0.2
# The plain lines' format (tqdm's meter fields): "preprocess: 4/10 (40%) [00:02<00:03, 2.00case/s, BraTS_004]".
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class Progress:
    """Report ``done`` of ``total`` items; call :meth:`update` after each item.

    ``stream`` defaults to the standard error of the moment the object is made;
    ``unit`` names the items in the rate ("case/s").
    """

    def __init__(self, label: str, total: int, stream=None, unit: str = "case"):
        self.label = label
        self.total = max(int(total), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.unit = unit
        self.started = time.time()
        self.interactive = bool(getattr(self.stream, "isatty", None) and self.stream.isatty())
        self.done = 0
        self._last_line = self.started
        self._last_tenth = 0
        self._bar = None
        if self.interactive:
            # leave=False: a bar that never finishes (an error) is cleared, not redrawn after the message.
            self._bar = tqdm(total=self.total, desc=label, unit=unit, file=self.stream, leave=False,
                             mininterval=REDRAW_INTERVAL, dynamic_ncols=True)

    def update(self, done: int, item: str = "") -> None:
        """``done`` items finished (a count, not an increment); ``item`` names the last one."""
        self.done = int(done)
        finished = self.done >= self.total
        if self._bar is not None:
            self._bar.set_postfix_str(item, refresh=False)
            self._bar.update(self.done - self._bar.n)
            if finished:
                self.close()
            return
        now = time.time()
        tenth = 10 * self.done // self.total
        if not finished and (tenth == self._last_tenth or now - self._last_line < LOG_INTERVAL):
            return
        self._last_tenth, self._last_line = tenth, now
        self.stream.write(tqdm.format_meter(self.done, self.total, now - self.started, prefix=self.label,
                                            unit=self.unit, postfix=item or None, bar_format=LINE_FORMAT) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a terminal bar, leaving its last state on screen (done by :meth:`update` at the end)."""
        if self._bar is not None:
            self._bar.leave = True
            self._bar.close()
            self._bar = None

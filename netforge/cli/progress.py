"""A status line at the bottom of a terminal that log lines scroll above.

Training logs a line every ``display`` iterations; between them a user on a terminal sees
``iter 1234/2000 [#########.....] 61% 52.3 it/s``. The bar is drawn on stderr only when stderr
is a terminal (log files and pipes get plain lines), redrawn at most a few times a second,
and erased before each log record is written (see ``netforge.cli.logs``).
"""

from __future__ import annotations

import sys
import time

_ERASE = "\r\033[K"


class StatusLine:
    """The one status line of this process; logs.py asks it to step aside for each record."""

    active: StatusLine | None = None

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.text = ""

    def show(self, text: str) -> None:
        self.text = text
        StatusLine.active = self
        self.stream.write(_ERASE + text)
        self.stream.flush()

    def hide(self) -> None:
        if self.text:
            self.stream.write(_ERASE)
            self.stream.flush()

    def redraw(self) -> None:
        if self.text:
            self.stream.write(self.text)
            self.stream.flush()

    def close(self) -> None:
        self.hide()
        self.text = ""
        if StatusLine.active is self:
            StatusLine.active = None


class TrainingBar:
    """Solver callback drawing iteration progress toward max_iter."""

    def __init__(self, solver, stream=None, width: int = 30, interval: float = 0.2):
        self.solver = solver
        self.line = StatusLine(stream)
        self.width = width
        self.interval = interval
        self._last_draw = 0.0
        self._rate_from = (time.perf_counter(), solver.iter)

    @staticmethod
    def wanted(stream=None) -> bool:
        stream = stream or sys.stderr
        return hasattr(stream, "isatty") and stream.isatty()

    def attach(self) -> None:
        self.solver.add_callback(on_end=self.update)

    def update(self) -> None:
        now = time.perf_counter()
        if now - self._last_draw < self.interval:
            return
        self._last_draw = now
        total = max(self.solver.param.max_iter, 1)
        done = min(self.solver.iter, total)
        filled = int(self.width * done / total)
        since, start_iter = self._rate_from
        rate = (self.solver.iter - start_iter) / max(now - since, 1e-9)
        bar = "#" * filled + "." * (self.width - filled)
        self.line.show(f"iter {done}/{total} [{bar}] {100 * done // total}% {rate:.1f} it/s")

    def close(self) -> None:
        self.line.close()

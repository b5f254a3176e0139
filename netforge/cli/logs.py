"""Caffe's (glog's) log line format, so Caffe's parse_log.py and plotting scripts work:

    I1122 11:22:33.123456 12345 solver.py:123] Iteration 100, lr = 0.01
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime


class GlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%m%d %H:%M:%S.%f")
        return (f"{record.levelname[0]}{stamp} {record.process} "
                f"{record.filename}:{record.lineno}] {record.getMessage()}")


class _StatusAwareHandler(logging.StreamHandler):
    """Erases the progress status line (if one is drawn) before a record, redraws it after."""

    def emit(self, record: logging.LogRecord) -> None:
        from netforge.cli.progress import StatusLine

        status = StatusLine.active
        if status is not None and status.stream is self.stream:
            status.hide()
            super().emit(record)
            status.redraw()
        else:
            super().emit(record)


def configure(level: int = logging.INFO, stream=None) -> logging.Logger:
    """Send netforge's log to ``stream`` (stderr, as Caffe) in glog format; idempotent."""
    logger = logging.getLogger("netforge")
    for handler in list(logger.handlers):
        if getattr(handler, "_netforge", False):
            logger.removeHandler(handler)
    handler = _StatusAwareHandler(stream or sys.stderr)
    handler._netforge = True
    handler.setFormatter(GlogFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger

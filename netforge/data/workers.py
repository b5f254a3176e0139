"""How many decode workers: row threads within a batch, and batch processes per layer.

Row threads (``RowPool``) split one batch's rows wherever the batch is loaded (the layer's
prefetch thread, a worker process, the converter): Pillow releases the GIL while it decodes
compressed images, so threads overlap that work. ``NETFORGE_DATA_WORKERS`` overrides their
count (1 = serial). Batch processes (``default_processes``, see process_prefetch) take the
whole loading of batches out of the training process; ``NETFORGE_DATA_PROCESSES`` overrides
their count (0 = the layer's prefetch thread).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """Workers per data layer: ``NETFORGE_DATA_WORKERS`` if set, else min(4, CPU count)."""
    text = os.environ.get("NETFORGE_DATA_WORKERS", "").strip()
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            pass
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def default_processes() -> int:
    """Worker processes per Data/ImageData layer (0: decode in the layer's prefetch thread).

    ``NETFORGE_DATA_PROCESSES`` if set; else one process per layer when the machine has two
    cores or more, and the thread on one core. Why: a thread decodes while holding the GIL
    the training loop needs (see process_prefetch), a process does not; on one core the
    two share the core either way, and a process only adds the hand-over. Platforms without
    ``os.memfd_create`` (the workers' shared memory) always use the thread.
    """
    if not hasattr(os, "memfd_create"):
        return 0
    text = os.environ.get("NETFORGE_DATA_PROCESSES", "").strip()
    if text:
        try:
            return max(0, int(text))
        except ValueError:
            pass
    return 1 if (os.cpu_count() or 1) >= 2 else 0


class RowPool:
    """Runs ``fn(i)`` for every row ``i`` of a batch, split into contiguous chunks over threads.

    Each row must write only its own outputs; ``run`` returns when all rows are done and
    re-raises the first exception a row raised (in row order).
    """

    def __init__(self, workers: int | None = None, name: str = "netforge-data"):
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self._name = name
        self._pool: ThreadPoolExecutor | None = None

    def run(self, fn: Callable[[int], None], rows: int) -> None:
        if self.workers <= 1 or rows < 2:
            for i in range(rows):
                fn(i)
            return
        if self._pool is None:  # created lazily: a layer that never runs needs no threads
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=self._name)
        chunks = min(self.workers, rows)
        bounds = [rows * c // chunks for c in range(chunks + 1)]
        futures = [self._pool.submit(_run_rows, fn, lo, hi)
                   for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        for future in futures:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _run_rows(fn: Callable[[int], None], lo: int, hi: int) -> None:
    for i in range(lo, hi):
        fn(i)

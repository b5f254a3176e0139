"""Background batch loading into a fixed set of reused buffers (Caffe's free/full queues).

A daemon thread takes a free buffer set, fills it with batch k (k = start, start+1, ...) and
puts it on the full queue; ``next()`` hands the consumer the next full set and gives the
previous one back to the free queue. Batch k's content is whatever ``load_batch`` computes
for k, so it depends only on the loader's seed and k, never on thread timing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

_STOP = object()


class Prefetcher:
    """Keeps up to ``depth`` batches loaded ahead of the consumer.

    Two ways to load:
    - with ``allocate`` (a callable returning a dict of arrays): ``depth`` buffer sets are
      allocated once and ``load_batch(k, buffers)`` fills one in place;
    - without it, ``load_batch(k)`` returns a dict of arrays that is copied into buffer sets
      allocated once, from the first batch's shapes and dtypes.

    An exception raised by ``load_batch`` is re-raised by ``next()`` in the consumer.
    """

    def __init__(
        self,
        load_batch: Callable,
        depth: int = 4,
        *,
        allocate: Callable[[], dict] | None = None,
        start: int = 0,
        name: str = "netforge-prefetch",
    ):
        self._load = load_batch
        self._allocate = allocate
        self.depth = max(1, int(depth))
        self._next_index = int(start)
        self.last_index: int | None = None
        self._free: queue.Queue = queue.Queue()
        self._full: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._current: dict | None = None
        self._error: BaseException | None = None
        for _ in range(self.depth):
            self._free.put(allocate() if allocate is not None else None)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _fill(self, index: int, buffers: dict | None) -> dict:
        if self._allocate is not None:
            self._load(index, buffers)
            return buffers
        batch = self._load(index)
        if buffers is None:
            buffers = {key: np.empty_like(np.asarray(value)) for key, value in batch.items()}
        for key, value in batch.items():
            np.copyto(buffers[key], value)
        return buffers

    def _run(self) -> None:
        index = self._next_index
        while not self._stop.is_set():
            buffers = self._free.get()
            if buffers is _STOP or self._stop.is_set():
                break
            try:
                buffers = self._fill(index, buffers)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                self._full.put((index, exc))
                return
            self._full.put((index, buffers))
            index += 1

    def next(self) -> dict:
        """The next batch's buffers (valid until the following ``next()`` call)."""
        if self._error is not None:
            raise self._error
        if self._thread is None:
            raise RuntimeError("the prefetcher is closed")
        if self._current is not None:
            self._free.put(self._current)
            self._current = None
        while True:
            try:
                index, item = self._full.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._full.empty():
                    raise RuntimeError("the prefetch thread stopped unexpectedly") from None
        if isinstance(item, BaseException):
            self._error = item
            raise item
        self.last_index = index
        self._current = item
        return item

    __next__ = next

    def __iter__(self):
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (after the batch it is loading, if any) and wait for it."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._free.put(_STOP)
        thread.join(timeout)
        self._current = None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close(timeout=0.1)
        except Exception:
            pass

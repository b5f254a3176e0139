"""The worker side of process_prefetch: a process that fills shared batch slots on request.

Run as ``python -m netforge.data.batch_worker CONN_FD MEMORY_FD`` by ``ProcessPrefetcher``:
``CONN_FD`` is its end of a socket pair (``multiprocessing.connection`` framing), ``MEMORY_FD``
the memfd holding the batch slots. The first message is ``(loader, layout, slot_bytes,
depth)``; then each ``(index, slot)`` request is answered ``(index, slot, None)`` once
``loader.load_batch(index, slot arrays)`` is done, or ``(index, slot, exception)``. ``None``,
or the socket closing (the training process ended, however it ended), stops the worker.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import sys

import numpy as np


def slot_layout(arrays: dict[str, np.ndarray], align: int = 64) -> tuple[list[tuple], int]:
    """``([(key, shape, dtype str, byte offset)], slot bytes)`` for one set of batch arrays;
    every array starts on a cache line."""
    layout, offset = [], 0
    for key, array in arrays.items():
        layout.append((key, tuple(array.shape), array.dtype.str, offset))
        offset += -(-array.nbytes // align) * align
    return layout, max(offset, align)


def slot_views(buffer, layout, slot_bytes: int, slot: int) -> dict[str, np.ndarray]:
    """The arrays of slot ``slot`` as views of the shared buffer."""
    base = slot * slot_bytes
    return {key: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buffer, offset=base + offset)
            for key, shape, dtype, offset in layout}


def picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError carrying its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve(conn, memory_fd: int) -> None:
    """Receive the loader, then fill the slot named by each request until told to stop."""
    try:
        loader, layout, slot_bytes, depth = conn.recv()
    except (EOFError, OSError):
        return
    memory = mmap.mmap(memory_fd, slot_bytes * depth)
    os.close(memory_fd)  # the mapping keeps the memory alive
    slots = [slot_views(memory, layout, slot_bytes, s) for s in range(depth)]
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):  # the training process is gone
                break
            if request is None:
                break
            index, slot = request
            try:
                loader.load_batch(index, slots[slot])
                answer = (index, slot, None)
            except Exception as exc:  # handed to the consumer, which re-raises it
                answer = (index, slot, picklable(exc))
            try:
                conn.send(answer)
            except OSError:
                break
    finally:
        slots = None
        loader.close()


def main(argv: list[str]) -> int:
    # The training process decides what Ctrl-C or a hang-up means, and then stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from multiprocessing.connection import Connection

    conn = Connection(int(argv[0]))
    try:
        serve(conn, int(argv[1]))
    except Exception as exc:  # a start-up failure: tell the training process what it was
        try:
            conn.send(("failed", picklable(exc)))
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

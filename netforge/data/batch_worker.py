"""The worker side of process_prefetch: a process that fills shared batch slots on request.

Run as ``python -m netforge.data.batch_worker CONN_FD MEMORY_FD`` by ``ProcessPrefetcher``:
``CONN_FD`` is its end of a socket pair (``multiprocessing.connection`` framing), ``MEMORY_FD``
the memfd holding the batch slots. The first message is ``(loader, layout, slot_bytes,
depth)`` (pickled); then each request, ``REQUEST.pack(index, slot)``, is answered with the
same bytes once ``loader.load_batch(index, slot arrays)`` is done, or with a pickled
``(index, slot, exception)``. (Raw bytes: pickling costs more than the rest of a hand-over.)
An empty request, or the socket closing (the training process ended, however it ended),
stops the worker.

A worker runs at a lower priority (``nice`` +10, Linux's SCHED_BATCH): it has ``depth``
batches of slack, the training loop has none, so when both want a core the loop wins, and a
request does not make the scheduler switch from the loop to the worker at once.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import struct
import sys

import numpy as np

REQUEST = struct.Struct("<qq")  # batch index, slot
WORKER_NICE = 10


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
                request = conn.recv_bytes()
            except (EOFError, OSError):  # the training process is gone
                break
            if not request:
                break
            index, slot = REQUEST.unpack(request)
            try:
                loader.load_batch(index, slots[slot])
                answer = request
            except Exception as exc:  # handed to the consumer, which re-raises it
                answer = pickle.dumps((index, slot, picklable(exc)))
            try:
                conn.send_bytes(answer)
            except OSError:
                break
    finally:
        slots = None
        loader.close()


def lower_priority() -> None:
    try:
        os.nice(WORKER_NICE)
        if hasattr(os, "SCHED_BATCH"):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:  # not permitted here: run at the normal priority
        pass


def main(argv: list[str]) -> int:
    # The training process decides what Ctrl-C or a hang-up means, and then stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lower_priority()
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

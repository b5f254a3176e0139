"""The worker side of process_prefetch: a process that fills shared batch slots on request.

Run as ``python -m netforge.data.batch_worker SOCKET_FD`` by ``ProcessPrefetcher``; the fd is
its end of a Unix socket pair, framed by ``multiprocessing.connection``. A worker serves one
*session* after another (a prefetcher's life; an idle worker waits for the next one):

- the session starts with a pickled ``("session", loader, layout, slot_bytes, depth)`` and
  the memfd of the batch slots passed as a descriptor (``reduction.sendfds``); the worker
  answers ``("ready", pid)``, or ``("failed", exception)`` and waits for another session;
- each request, ``REQUEST.pack(index, slot)``, is answered with the same bytes once
  ``loader.load_batch(index, slot arrays)`` is done, or with a pickled ``(index, slot,
  exception)`` (raw bytes: pickling would cost more than the rest of a hand-over);
- an empty request ends the session: after answering every earlier request the worker
  answers ``("released",)``, closes the loader and unmaps the slots.

The socket closing (the training process ended, however it ended) stops the worker.

A worker runs under Linux's SCHED_BATCH policy: a request wakes it without making the
scheduler switch from the training loop to it at once (the worker has ``depth`` batches of
slack, the loop has none), yet its share of a contended core stays the normal one. (A nice
value would lower that share too: measured on this shared machine, at nice +10 a worker fell
behind whenever other jobs kept the cores busy, and the training loop waited for it.)
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


class Gone(Exception):
    """The training process closed the socket."""


def receive(conn, raw: bool = False):
    try:
        return conn.recv_bytes() if raw else conn.recv()
    except (EOFError, OSError):
        raise Gone from None


def session(conn, sock, loader, layout, slot_bytes: int, depth: int) -> None:
    """One prefetcher's session: map the slots, answer requests until released."""
    from multiprocessing.reduction import recvfds

    memory_fd = recvfds(sock, 1)[0]
    try:
        memory = mmap.mmap(memory_fd, slot_bytes * depth)
    finally:
        os.close(memory_fd)  # the mapping keeps the memory alive
    slots = [slot_views(memory, layout, slot_bytes, s) for s in range(depth)]
    try:
        conn.send(("ready", os.getpid()))
        while True:
            request = receive(conn, raw=True)
            if not request:
                conn.send(("released",))
                return
            index, slot = REQUEST.unpack(request)
            try:
                loader.load_batch(index, slots[slot])
                answer = request
            except Exception as exc:  # handed to the consumer, which re-raises it
                answer = pickle.dumps((index, slot, picklable(exc)))
            conn.send_bytes(answer)
    finally:
        slots = None
        loader.close()
        memory.close()


def serve(conn, sock) -> None:
    """Sessions until the training process goes away."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as exc:  # the loader did not unpickle (its dataset is gone?)
            from multiprocessing.reduction import recvfds

            os.close(recvfds(sock, 1)[0])
            conn.send(("failed", picklable(exc)))
            continue
        _, loader, layout, slot_bytes, depth = message
        try:
            session(conn, sock, loader, layout, slot_bytes, depth)
        except Gone:
            return


def batch_policy() -> None:
    try:
        if hasattr(os, "SCHED_BATCH"):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:  # not permitted here: the normal policy
        pass


def main(argv: list[str]) -> int:
    # The training process decides what Ctrl-C or a hang-up means, and then stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    batch_policy()
    import socket
    from multiprocessing.connection import Connection

    sock = socket.socket(fileno=int(argv[0]))
    conn = Connection(os.dup(sock.fileno()))
    try:
        serve(conn, sock)
    except OSError:  # the socket broke mid-answer: the training process is gone
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

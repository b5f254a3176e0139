"""Batch loading in worker processes, into shared-memory batch slots.

Why processes: a prefetch *thread* decodes and transforms while holding the GIL (numpy's
per-call overhead on small images, protobuf parsing, the LMDB cursor), so it takes the GIL
from the training loop, and each hand-over costs the loop up to a switch interval. Measured
on a 2-core machine (tools/bench/datafeed.py) that made a LeNet step 5-20 % slower than one
fed by DummyData. A worker process has its own interpreter: the only work left in the
training process is one small message and the copy of the finished batch into the top.

How: one ``multiprocessing.shared_memory`` segment holds ``depth`` slots, each one batch of
every top array. The consumer sends batch ``k`` to worker ``k % workers`` with the slot to
fill (slot ``k % depth``); workers answer in the order they were asked, so ``next()`` waits
for exactly one answer. A batch is ``loader.load_batch(k, slot)``: a function of the
loader's seed, stream origin, shard and k only, so 0 (the thread), 1 or N workers, and a
resumed run, see identical batches.

Cleanup: the segment's name is unlinked as soon as every worker has attached, so nothing
stays in /dev/shm after a normal end, Ctrl-C or a crash (the mappings live as long as the
processes that hold them; until the unlink, multiprocessing's resource tracker removes the
name if this process dies). Workers ignore SIGINT/SIGHUP (the training process decides what
an interrupt means and stops them) and leave when their pipe closes, i.e. when the training
process ends in any way. A worker that dies is reported as one ``RunError`` naming it and its
exit status; ``next()`` never hangs on it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
from multiprocessing import connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from netforge.errors import RunError

log = logging.getLogger("netforge")

START_METHOD = "forkserver"  # not fork: the training process runs BLAS and prefetch threads
# Imported once by the fork server, so that each worker starts in milliseconds, not the
# fraction of a second importing numpy, lmdb, protobuf and Pillow would take.
PRELOAD = ["netforge.data.process_prefetch", "netforge.data.loaders"]
STARTUP_SECONDS = 120.0  # a worker that has not attached by then is reported as stuck
ALIGN = 64  # bytes: every array of a slot starts on a cache line


def slot_layout(arrays: dict[str, np.ndarray]) -> tuple[list[tuple], int]:
    """``([(key, shape, dtype str, byte offset)], slot bytes)`` for one set of batch arrays."""
    layout, offset = [], 0
    for key, array in arrays.items():
        layout.append((key, tuple(array.shape), array.dtype.str, offset))
        offset += -(-array.nbytes // ALIGN) * ALIGN
    return layout, max(offset, ALIGN)


def slot_views(buffer, layout, slot_bytes: int, slot: int) -> dict[str, np.ndarray]:
    """The arrays of slot ``slot`` as views of the shared buffer."""
    base = slot * slot_bytes
    return {key: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buffer, offset=base + offset)
            for key, shape, dtype, offset in layout}


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError carrying its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve(conn, shm_name: str, layout, slot_bytes: int, depth: int, loader) -> None:
    """A worker process's loop: fill the slot named by each request, answer, repeat."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    shm = SharedMemory(name=shm_name)
    slots = [slot_views(shm.buf, layout, slot_bytes, s) for s in range(depth)]
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
                conn.send((index, slot, None))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                conn.send((index, slot, _picklable(exc)))
    finally:
        slots = None
        loader.close()
        shm.close()


def unlink(shm: SharedMemory) -> None:
    """Remove the segment's name (once; later calls do nothing)."""
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


def exit_description(process) -> str:
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessPrefetcher:
    """Keeps up to ``depth`` batches of ``loader`` loaded ahead, by ``workers`` processes.

    The interface of ``Prefetcher``: ``next()`` returns the next batch's arrays (views of a
    shared slot, valid until the following ``next()``), ``last_index`` its batch number,
    ``close()`` stops the workers. ``loader`` must pickle (it is rebuilt in each worker) and
    provide ``allocate()`` and ``load_batch(index, out)``.
    """

    def __init__(self, loader, depth: int = 4, *, workers: int = 1, start: int = 0,
                 name: str = "netforge-data"):
        self.depth = max(1, int(depth))
        self.name = name
        self.last_index: int | None = None
        self._error: BaseException | None = None
        self._current: int | None = None  # the slot handed out by the last next()
        self._want = int(start)  # the batch next() returns
        self._issued = int(start)  # the next batch to ask a worker for
        self._closed = False
        self._processes: list = []
        self._conns: list = []
        self._layout, self._slot_bytes = slot_layout(loader.allocate())
        self._shm = SharedMemory(create=True, size=self._slot_bytes * self.depth)
        try:
            self._slots = [slot_views(self._shm.buf, self._layout, self._slot_bytes, s)
                           for s in range(self.depth)]
            self._start_workers(loader, max(1, int(workers)))
        except BaseException:
            self.close()
            raise
        finally:
            unlink(self._shm)  # every worker has attached (or none will): drop the name
        for _ in range(self.depth):
            self._issue()

    def _start_workers(self, loader, workers: int) -> None:
        context = multiprocessing.get_context(START_METHOD)
        if START_METHOD == "forkserver":
            context.set_forkserver_preload(PRELOAD)  # takes effect when the server starts
        for w in range(workers):
            parent_end, child_end = context.Pipe(duplex=True)
            process = context.Process(
                target=serve, name=f"{self.name}-{w}", daemon=True,
                args=(child_end, self._shm.name, self._layout, self._slot_bytes, self.depth,
                      loader),
            )
            process.start()
            child_end.close()
            self._processes.append(process)
            self._conns.append(parent_end)
        for w in range(workers):
            self._receive(w, "starting")

    def _receive(self, w: int, doing: str):
        """The next message of worker ``w``; RunError if it dies first."""
        conn, process = self._conns[w], self._processes[w]
        timeout = STARTUP_SECONDS if doing == "starting" else None
        ready = connection.wait([conn, process.sentinel], timeout)
        if conn in ready:
            try:
                return conn.recv()
            except (EOFError, OSError):
                pass
        process.join(1.0)
        what = exit_description(process) if ready else f"no answer in {timeout:.0f} s"
        raise RunError(f"{self.name}: data worker process {w} (pid {process.pid}) died "
                       f"while {doing} ({what})")

    def _issue(self) -> None:
        index = self._issued
        self._conns[index % len(self._conns)].send((index, index % self.depth))
        self._issued += 1

    def next(self) -> dict[str, np.ndarray]:
        """The next batch's arrays (valid until the following ``next()`` call)."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("the prefetcher is closed")
        if self._current is not None:  # the consumer is done with it: refill it
            self._current = None
            self._issue()
        index = self._want
        try:
            got, slot, error = self._receive(index % len(self._conns),
                                             f"loading batch {index}")
        except RunError as exc:
            self._error = exc
            raise
        if error is not None:
            self._error = error
            raise error
        if got != index:  # cannot happen: each worker answers in order
            raise RuntimeError(f"{self.name}: expected batch {index}, a worker sent {got}")
        self._want += 1
        self.last_index = index
        self._current = slot
        return self._slots[slot]

    __next__ = next

    def __iter__(self):
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers (after the batch each is loading) and free the shared memory."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for process in self._processes:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(1.0)
        for conn in self._conns:
            conn.close()
        self._current = None
        self._slots = []
        if self._shm is not None:
            shm, self._shm = self._shm, None
            unlink(shm)
            try:
                shm.close()
            except BufferError:  # a caller still holds a batch view: freed with it
                log.debug("%s: shared batch slots still referenced at close", self.name)

    def __enter__(self) -> ProcessPrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close(timeout=0.5)
        except Exception:
            pass

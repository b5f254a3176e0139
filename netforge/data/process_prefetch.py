"""Batch loading in worker processes, into shared-memory batch slots.

Why processes: a prefetch *thread* decodes and transforms while holding the GIL (numpy's
per-call overhead on small images, protobuf parsing, the LMDB cursor), so it takes the GIL
from the training loop, and each hand-over costs the loop up to a switch interval. Measured
on a 2-core machine (tools/bench/datafeed.py) that made a LeNet step 5-20 % slower than one
fed by DummyData. A worker process has its own interpreter: the only work left in the
training process is one small message and the copy of the finished batch into the top.

How: one shared memory file holds ``depth`` slots, each one batch of every top array. The
consumer sends batch ``k`` to worker ``k % workers`` with the slot to fill (slot
``k % depth``); workers answer in the order they were asked, so ``next()`` waits for exactly
one answer. A batch is ``loader.load_batch(k, slot)``: a function of the loader's seed,
stream origin, shard and k only, so 0 workers (the thread), 1 or N, and a resumed run, see
identical batches.

Why a memfd and fresh interpreters, not multiprocessing's Process and SharedMemory: the
memory is an anonymous ``memfd`` handed to the workers by descriptor. It has no name in
/dev/shm at all, so no way of ending (normal, Ctrl-C, crash, SIGKILL) can leak one: the
kernel frees it with the last process that maps it. (A named SharedMemory leaks when the
creator is killed before it unlinks, and on Python < 3.13 each attaching process registers it
with a resource tracker of its own.) The workers are ``python -m netforge.data.batch_worker``
processes: multiprocessing's spawn and forkserver would re-run the user's main script in each
worker (a pycaffe-style script without an ``if __name__ == "__main__"`` guard would start
training again), and fork would copy a process that runs BLAS and prefetch threads. Workers
have their own session (a terminal's Ctrl-C goes to the training process, which stops them)
and leave when their socket closes, i.e. when the training process ends in any way. A worker
that dies is reported as one ``RunError`` naming it and its exit status; ``next()`` never
hangs on it.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
from multiprocessing import connection
from pathlib import Path

import numpy as np

from netforge.data.batch_worker import REQUEST, slot_layout, slot_views
from netforge.errors import RunError

log = logging.getLogger("netforge")

STARTUP_SECONDS = 120.0  # a worker that has not answered by then is reported as stuck
# Where this netforge lives, so that workers import the same copy whatever sys.path says.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def supported() -> bool:
    """Whether this platform has what the workers need (memfd: Linux, FreeBSD)."""
    return hasattr(os, "memfd_create")


def exit_description(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def worker_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT, *filter(None, [env.get("PYTHONPATH")])])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # a worker does no matrix maths: no idle BLAS threads
    return env


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
        self._processes: list[subprocess.Popen] = []
        self._conns: list[connection.Connection] = []
        self._layout, self._slot_bytes = slot_layout(loader.allocate())
        memory_fd = os.memfd_create("netforge-batches", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memory_fd, self._slot_bytes * self.depth)
            self._memory = mmap.mmap(memory_fd, self._slot_bytes * self.depth)
            self._slots = [slot_views(self._memory, self._layout, self._slot_bytes, s)
                           for s in range(self.depth)]
            self._start_workers(loader, max(1, int(workers)), memory_fd)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(memory_fd)  # the mappings keep the memory alive
        for _ in range(self.depth):
            self._issue()

    def _start_workers(self, loader, workers: int, memory_fd: int) -> None:
        env = worker_environment()
        for _ in range(workers):
            ours, theirs = socket.socketpair()
            with theirs:
                process = subprocess.Popen(
                    [sys.executable, "-m", "netforge.data.batch_worker", str(theirs.fileno()),
                     str(memory_fd)],
                    pass_fds=(theirs.fileno(), memory_fd), env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, start_new_session=True,
                )
            self._processes.append(process)
            self._conns.append(connection.Connection(ours.detach()))
        for conn in self._conns:  # sent after every start, so the workers import together
            conn.send((loader, self._layout, self._slot_bytes, self.depth))
        for w in range(workers):
            answer = pickle.loads(self._receive(w, "starting", STARTUP_SECONDS))
            if answer[0] == "failed":
                raise answer[1]

    @property
    def worker_pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def _receive(self, w: int, doing: str, timeout: float | None = None):
        """The next message of worker ``w`` (bytes); RunError if it dies (or is stuck) first."""
        conn, process = self._conns[w], self._processes[w]
        if timeout is None or connection.wait([conn], timeout):
            try:
                return conn.recv_bytes()
            except (EOFError, OSError):  # the socket closed: the worker is gone
                pass
            try:
                what = exit_description(process.wait(5.0))
            except subprocess.TimeoutExpired:
                what = "its connection broke"
        else:
            what = f"no answer in {timeout:.0f} s"
        raise RunError(f"{self.name}: data worker process {w} (pid {process.pid}) died "
                       f"while {doing} ({what})")

    def _issue(self) -> None:
        index = self._issued
        self._conns[index % len(self._conns)].send_bytes(REQUEST.pack(index, index % self.depth))
        self._issued += 1

    def next(self) -> dict[str, np.ndarray]:
        """The next batch's arrays (valid until the following ``next()`` call)."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("the prefetcher is closed")
        try:
            if self._current is not None:  # the consumer is done with it: refill it
                self._current = None
                self._issue()
            index = self._want
            answer = self._receive(index % len(self._conns), f"loading batch {index}")
        except (RunError, OSError) as exc:
            if not isinstance(exc, RunError):  # a send to a worker that is gone
                exc = RunError(f"{self.name}: a data worker process is gone ({exc})")
            self._error = exc
            raise exc from None
        if len(answer) == REQUEST.size:
            got, slot = REQUEST.unpack(answer)
        else:
            got, slot, error = pickle.loads(answer)
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
                conn.send_bytes(b"")
            except (OSError, ValueError):
                pass
        for process in self._processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for conn in self._conns:
            conn.close()
        self._current = None
        self._slots = []
        memory, self._memory = getattr(self, "_memory", None), None
        if memory is not None:
            try:
                memory.close()
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

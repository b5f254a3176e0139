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
import threading
import time
from multiprocessing import connection
from multiprocessing.reduction import sendfds
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


class Worker:
    """One batch worker process and its socket; serves one prefetcher at a time."""

    def __init__(self, env: dict[str, str]):
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "netforge.data.batch_worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True,
            )
        self.sock = ours
        self.conn = connection.Connection(os.dup(ours.fileno()))

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def start_session(self, loader, layout, slot_bytes: int, depth: int, memory_fd: int):
        self.conn.send(("session", loader, layout, slot_bytes, depth))
        sendfds(self.sock, [memory_fd])

    def end_session(self, timeout: float) -> bool:
        """Release the worker (after its pending answers); False if it did not answer."""
        try:
            self.conn.send_bytes(b"")
            end = time.monotonic() + timeout
            while connection.wait([self.conn], max(0.0, end - time.monotonic())):
                answer = self.conn.recv_bytes()
                if len(answer) != REQUEST.size and pickle.loads(answer) == ("released",):
                    return True
        except (EOFError, OSError):
            pass
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Close the socket (the worker then exits) and reap the process."""
        self.conn.close()
        self.sock.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# Idle workers, kept for the next prefetcher of this process: a fresh interpreter takes a
# fraction of a second to import numpy and the loaders, and a layer restarts its prefetcher
# on every set_state/shard (tests and tools build many layers). They exit with this process.
MAX_IDLE_WORKERS = 8
_idle: list[Worker] = []
_idle_lock = threading.Lock()


def take_workers(count: int) -> list[Worker]:
    """``count`` workers, idle ones first."""
    taken = []
    with _idle_lock:
        while _idle and len(taken) < count:
            worker = _idle.pop()
            if worker.alive():
                taken.append(worker)
            else:
                worker.stop()
    if len(taken) < count:
        env = worker_environment()
        try:
            taken += [Worker(env) for _ in range(count - len(taken))]
        except OSError as exc:
            for worker in taken:
                give_back(worker)
            raise RunError(f"cannot start a data worker process ({sys.executable}: {exc}); "
                           "NETFORGE_DATA_PROCESSES=0 loads batches in a thread instead") from None
    return taken


def give_back(worker: Worker) -> None:
    with _idle_lock:
        if worker.alive() and len(_idle) < MAX_IDLE_WORKERS:
            _idle.append(worker)
            return
    worker.stop()


def stop_idle_workers() -> None:
    """Stop the workers kept for reuse (they also stop by themselves when this process ends)."""
    with _idle_lock:
        idle = list(_idle)
        _idle.clear()
    for worker in idle:
        worker.stop()


class ProcessPrefetcher:
    """Keeps up to ``depth`` batches of ``loader`` loaded ahead, by ``workers`` processes.

    The interface of ``Prefetcher``: ``next()`` returns the next batch's arrays (views of a
    shared slot, valid until the following ``next()``), ``last_index`` its batch number,
    ``close()`` releases the workers (kept for reuse). ``loader`` must pickle (it is rebuilt
    in each worker) and provide ``allocate()`` and ``load_batch(index, out)``.
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
        self._workers: list[Worker] = []
        self._in_session: list[bool] = []
        self._memory = None
        self._layout, self._slot_bytes = slot_layout(loader.allocate())
        memory_fd = os.memfd_create("netforge-batches", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memory_fd, self._slot_bytes * self.depth)
            self._memory = mmap.mmap(memory_fd, self._slot_bytes * self.depth)
            self._slots = [slot_views(self._memory, self._layout, self._slot_bytes, s)
                           for s in range(self.depth)]
            self._start_sessions(loader, max(1, int(workers)), memory_fd)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(memory_fd)  # the mappings keep the memory alive
        for _ in range(self.depth):
            self._issue()

    def _start_sessions(self, loader, workers: int, memory_fd: int) -> None:
        self._workers = take_workers(workers)
        self._in_session = [False] * workers
        for worker in self._workers:  # all sent first, so that fresh ones import together
            try:
                worker.start_session(loader, self._layout, self._slot_bytes, self.depth,
                                     memory_fd)
            except OSError:
                pass  # gone: reported by the receive below
        failure = None  # every answer is read, so that no reused worker keeps a stale one
        for w in range(workers):
            try:
                answer = pickle.loads(self._receive(w, "starting", STARTUP_SECONDS))
            except RunError as exc:
                failure = failure or exc
                continue
            if answer[0] == "failed":
                failure = failure or answer[1]
            else:
                self._in_session[w] = True
        if failure is not None:
            raise failure

    @property
    def worker_pids(self) -> list[int]:
        return [worker.pid for worker in self._workers]

    def _receive(self, w: int, doing: str, timeout: float | None = None) -> bytes:
        """The next message of worker ``w``; RunError if it dies (or is stuck) first."""
        worker = self._workers[w]
        if timeout is None or connection.wait([worker.conn], timeout):
            try:
                return worker.conn.recv_bytes()
            except (EOFError, OSError):  # the socket closed: the worker is gone
                pass
            raise self._died(w, doing)
        raise self._died(w, doing, f"no answer in {timeout:.0f} s")

    def _died(self, w: int, doing: str, what: str | None = None) -> RunError:
        """The one error for worker ``w`` gone while ``doing``; it is never used again."""
        worker = self._workers[w]
        if what is None:
            try:
                what = exit_description(worker.process.wait(5.0))
            except subprocess.TimeoutExpired:
                what = "its connection broke"
        self._in_session[w] = False
        worker.stop(0.0)
        return RunError(f"{self.name}: data worker process {w} (pid {worker.pid}) died "
                        f"while {doing} ({what})")

    def _issue(self) -> None:
        index = self._issued
        w = index % len(self._workers)
        try:
            self._workers[w].conn.send_bytes(REQUEST.pack(index, index % self.depth))
        except OSError:
            raise self._died(w, f"loading batch {index}") from None
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
            answer = self._receive(index % len(self._workers), f"loading batch {index}")
        except RunError as exc:
            self._error = exc
            raise
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
        """Release the workers (after the batch each is loading; they are kept for the next
        prefetcher) and free the shared memory."""
        if self._closed:
            return
        self._closed = True
        for worker, in_session in zip(self._workers, self._in_session, strict=True):
            if not in_session:
                give_back(worker)
            elif worker.end_session(timeout):
                give_back(worker)
            else:  # stuck or gone: never reused
                worker.stop(0.0)
        self._current = None
        self._slots = []
        memory, self._memory = self._memory, None
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

"""Batch-parallel execution of kernels on the CPU: a tiny thread pool, and BLAS threads.

numpy runs its elementwise kernels (pooling, im2col, transposes, bias adds) on one core,
while OpenBLAS splits each GEMM over its own threads, which then spin between GEMMs. On a
2-core machine a LeNet step thus used the second core only inside GEMMs (measured, quiet:
16.6 ms on 1 thread, 13.8 ms on 2, while a 32-image step takes 9.2 ms on one). Layers that
process images independently (convolution, pooling, inner product) instead split the batch
into ``parts()`` slices and ``run`` one task per slice on this pool, each slice with its own
workspace, its GEMMs single-threaded: every core then does all kinds of work. numpy releases
the GIL inside its loops and BLAS calls, so Python threads suffice.

While a parallel region runs, OpenBLAS is held at one thread (``openblas_set_num_threads``,
reached through ctypes in numpy's bundled library) and given back its thread count after, so
a layer that cannot split (a batch of one) still gets multi-threaded GEMMs. The pool's idle
worker sleeps on a condition variable, and the calling thread takes tasks itself, so on a
loaded machine a late worker costs nothing but the parallelism.

    configure(parts)   set the number of slices (tests; NETFORGE_NUM_THREADS at start-up)
    parts(xp) -> int   slices a batch-parallel layer should use now (1: unsplit)
    split(n, count)    the (lo, hi) ranges
    run(tasks)         run independent tasks in parallel
    run_alone(task)    run one task here, OpenBLAS held at one thread

The number of parts is ``NETFORGE_NUM_THREADS`` when set (0 or 1: off), else OpenBLAS's
thread count (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / the CPUs available) when it is 2 to
``_DEFAULT_MAX`` (with more cores, OpenBLAS's own threading of large GEMMs is left alone).
Measured on the 2-core machine, quiet (load < 1.3), 2 parts vs OpenBLAS's 2 threads: LeNet
step 13.8 -> 12.6 ms, CIFAR-10 quick step 91-116 -> 80-84 ms and predict 41.7 -> 29.7 ms,
AlexNet and ResNet-50 unchanged (their time is in large GEMMs, which OpenBLAS already
splits); under heavy load (5 on 2 cores) OpenBLAS's spinning threads collapsed (step medians
10x the 1-thread time) while this pool degrades to about the 1-thread time. Without a
controllable OpenBLAS (another BLAS, CuPy arrays) everything runs unsplit.
"""

from __future__ import annotations

import contextvars
import ctypes
import os
import re
import threading
from collections.abc import Callable, Sequence

import numpy

from netforge.ops import compiled

_MAX_PARTS = 8  # at most, whatever NETFORGE_NUM_THREADS says
_DEFAULT_MAX = 4  # by default, only up to this many cores


class _Blas:
    """numpy's OpenBLAS thread control, or None when it cannot be found."""

    def __init__(self):
        self.get = self.set = None
        try:
            with open("/proc/self/maps") as handle:
                paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", handle.read())))
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix in ("scipy_openblas_", "openblas_"):
                for suffix in ("64_", ""):
                    get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                    put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                    if get is not None and put is not None:
                        self.get, self.set = get, put
                        return


class _Pool:
    """``run(tasks)``: every task runs once; the caller takes tasks too and returns when all
    are done, re-raising the first exception."""

    def __init__(self, workers: int):
        self._cv = threading.Condition()
        self._tasks: Sequence[Callable[[], object]] = ()
        self._next = 0
        self._pending = 0
        self._error: BaseException | None = None
        self._generation = 0
        for _ in range(workers):
            threading.Thread(target=self._work, daemon=True, name="netforge-cpu").start()

    def _take(self):
        with self._cv:
            if self._next >= len(self._tasks):
                return None
            task = self._tasks[self._next]
            self._next += 1
            return task

    def _finish(self, error: BaseException | None) -> None:
        with self._cv:
            if error is not None and self._error is None:
                self._error = error
            self._pending -= 1
            if self._pending == 0:
                self._cv.notify_all()

    def _drain(self) -> None:
        while (task := self._take()) is not None:
            try:
                task()
            except BaseException as error:  # re-raised by run() in the calling thread
                self._finish(error)
            else:
                self._finish(None)

    def _work(self) -> None:
        seen = 0
        while True:
            with self._cv:
                while self._generation == seen:
                    self._cv.wait()
                seen = self._generation
            self._drain()

    def run(self, tasks: Sequence[Callable[[], object]]) -> None:
        with self._cv:
            self._tasks, self._next, self._pending = tasks, 0, len(tasks)
            self._error = None
            self._generation += 1
            self._cv.notify_all()
        self._drain()
        with self._cv:
            while self._pending:
                self._cv.wait()
            error, self._tasks = self._error, ()
        if error is not None:
            raise error


_blas: _Blas | None = None
_pool: _Pool | None = None
_parts = 1
_lock = threading.Lock()
_busy = threading.Lock()  # held while a parallel region runs


def _setup() -> None:
    global _blas, _pool, _parts
    with _lock:
        if _blas is not None:
            return
        blas = _Blas()
        wanted = os.environ.get("NETFORGE_NUM_THREADS", "").strip()
        if wanted:
            parts = min(int(wanted), _MAX_PARTS)
        else:
            parts = int(blas.get()) if blas.get is not None else 1
            parts = parts if parts <= _DEFAULT_MAX else 1
        if blas.set is None:
            parts = 1
        _parts = max(1, parts)
        _pool = _Pool(_parts - 1) if _parts > 1 else None
        _blas = blas


def configure(count: int) -> None:
    """Use ``count`` slices from now on (layers read it at reshape); 1 turns it off."""
    global _pool, _parts
    _setup()
    with _lock:
        count = max(1, min(int(count), _MAX_PARTS)) if _blas.set is not None else 1
        if count != _parts:
            _pool = _Pool(count - 1) if count > 1 else None
            _parts = count


def parts(xp=numpy) -> int:
    """How many slices a batch-parallel kernel should split its batch into (1: don't)."""
    if xp is not numpy:
        return 1
    if _blas is None:
        _setup()
    return _parts


def split(n: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous (lo, hi) ranges covering 0..n, as even as possible."""
    count = max(1, min(count, n))
    bounds = [n * k // count for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def run(tasks: Sequence[Callable[[], object]]) -> None:
    """Run the tasks (independent; each writes its own memory) in parallel, with OpenBLAS
    held at one thread meanwhile. One task, or a call while another region runs (from a
    task, or another thread), runs inline."""
    if len(tasks) == 1 or _pool is None or not _busy.acquire(blocking=False):
        for task in tasks:
            task()
        return
    if compiled.enabled() and compiled.load("jit").parallel_kernels():
        serial = compiled.load("jit").on_one_thread  # one core per task: prange loops too
        tasks = [lambda task=task: serial(task) for task in tasks]
    # Each task in a copy of the caller's context, so that numpy's error state (a context
    # variable: the solver silences overflow warnings, its divergence guard reports them)
    # holds in the pool's threads too.
    contexts = [contextvars.copy_context() for _ in tasks]
    tasks = [lambda task=task, context=context: context.run(task)
             for task, context in zip(tasks, contexts, strict=True)]
    try:
        threads = _blas.get()
        _blas.set(1)
        try:
            _pool.run(tasks)
        finally:
            _blas.set(threads)
    finally:
        _busy.release()


def run_alone(task: Callable[[], object]) -> None:
    """``task()`` on this thread with OpenBLAS held at one thread: for work too small to
    share (a hand-off to the pool costs tens of microseconds; OpenBLAS's own threads stall
    whenever a core is busy elsewhere)."""
    if _blas is None:
        _setup()
    if _blas.set is None or not _busy.acquire(blocking=False):
        task()  # inside a parallel region OpenBLAS already runs on one thread
        return
    try:
        threads = _blas.get()
        _blas.set(1)
        try:
            task()
        finally:
            _blas.set(threads)
    finally:
        _busy.release()

"""numba's decorator as every compiled kernel uses it (imports numba: load lazily).

``kernel``: no Python objects, the GIL released (so ``netforge.ops.batch_split``'s threads
run kernels side by side), machine code cached on disk (``cache=True``, next to this package
or in NUMBA_CACHE_DIR), numpy's error model (a division by zero gives inf/nan as numpy
would, without a check per division). ``parallel=True`` (no kernel uses it now, see the
package docstring) would run ``prange`` loops on numba's pool, sized like OpenBLAS's
(NETFORGE_NUM_THREADS, else OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else every core), and
``on_one_thread`` keeps such loops on the calling thread inside batch_split's tasks.
"""

from __future__ import annotations

import os

import numba
from numba import prange

__all__ = ["kernel", "prange"]


def _threads() -> int | None:
    for name in ("NETFORGE_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return min(int(value), numba.config.NUMBA_NUM_THREADS)
    return None


if (_count := _threads()) is not None:
    numba.set_num_threads(_count)


_parallel_defined = False


def kernel(fn=None, *, parallel: bool = False):
    """``@kernel`` or ``@kernel(parallel=True)``."""
    global _parallel_defined
    _parallel_defined = _parallel_defined or parallel
    decorate = numba.njit(cache=True, nogil=True, parallel=parallel, error_model="numpy")
    return decorate if fn is None else decorate(fn)


def parallel_kernels() -> bool:
    """Some kernel loaded so far runs ``prange`` loops (else ``on_one_thread`` is not needed:
    numba's thread count reaches only parallel kernels, and setting it costs 10-30 µs a
    task, measured: a millisecond a forward of SqueezeNet at batch 1)."""
    return _parallel_defined


def on_one_thread(task):
    """``task()`` with this thread's compiled kernels on one thread (numba's count is per
    thread): for tasks that ``netforge.ops.batch_split`` already runs one per core."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return task()
    finally:
        numba.set_num_threads(previous)

"""Compile-once cache for CuPy kernels.

CuPy compiles an ``ElementwiseKernel``/``RawKernel`` on its first launch for each dtype
signature (NVRTC, cached on disk); building the kernel *object* is cheap but not free, and a
kernel object created per call defeats CuPy's in-memory cache. Every kernel in
``netforge.ops.cuda`` is therefore built through ``elementwise``/``raw`` below exactly once per
process, keyed by its name. The first launch (the compile) must happen in the eager warm-up
iteration, never inside CUDA-graph capture.
"""

from __future__ import annotations

import functools

import cupy

# Accumulate in float for half types and in double for double: the type the kernels' sums,
# maxima and exponentials run in (``A`` in kernel bodies).
ACCUMULATOR_PREAMBLE = r"""
template <typename T> struct nf_acc { typedef float type; };
template <> struct nf_acc<double> { typedef double type; };
"""

_cache: dict[str, object] = {}


def elementwise(name: str, in_params: str, out_params: str, body: str,
                preamble: str = "", **kwargs) -> cupy.ElementwiseKernel:
    """The cached ``cupy.ElementwiseKernel`` called ``name`` (built on first request)."""
    kernel = _cache.get(name)
    if kernel is None:
        kernel = cupy.ElementwiseKernel(in_params, out_params, body, name,
                                        preamble=ACCUMULATOR_PREAMBLE + preamble, **kwargs)
        _cache[name] = kernel
    return kernel


def raw(name: str, code: str, **kwargs) -> cupy.RawKernel:
    """The cached ``cupy.RawKernel`` for function ``name`` in ``code``."""
    kernel = _cache.get(name)
    if kernel is None:
        kernel = cupy.RawKernel(code, name, **kwargs)
        _cache[name] = kernel
    return kernel


@functools.cache
def threads_per_block() -> int:
    return 256


def blocks_for(count: int, threads: int | None = None) -> int:
    threads = threads or threads_per_block()
    return max(1, -(-int(count) // threads))

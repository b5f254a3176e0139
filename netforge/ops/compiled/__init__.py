"""Compiled CPU kernels (numba) for the ops whose numpy form is slow on small arrays.

The xp-generic numpy code in ``netforge.ops`` stays the reference (and the path CuPy takes):
an op asks ``active(*arrays)`` and, when it says yes, hands its arrays to the kernel of the
same name in one of these modules instead:

    pooling       MAX and AVE pooling, forward and backward
    elementwise   ReLU (leaky too), forward and backward
    loss          softmax + multinomial loss, forward and backward
    normalization BatchNorm (training and global statistics), LRN across channels
    update_rules  each solver rule's normalize + regularize + update + apply as one pass
    fused         the per-channel epilogue (bias, BatchNorm, Scale, ReLU) of fused layers
    winograd      Winograd F(2x2, 3x3) filter, input and output tile transforms

Only those modules import numba, and only when an op first needs one (``load``), so a net
on CuPy, a process with NETFORGE_NO_JIT=1, or an install without numba never pays for it.
Kernels are compiled with ``cache=True``: the first process on a machine compiles those it
uses (seconds; tools/bench/cpu.py reports the first step apart), later ones load machine
code from numba's cache. The kernels are serial loops: the batch is split across cores
outside them, by ``netforge.ops.batch_split`` (each slice's kernels on one core, OpenBLAS
held at one thread meanwhile). numba's own ``prange`` pool was measured and rejected on the
2-core machine: its threads and OpenBLAS's spin-waiting ones fought for the cores between
GEMMs (a parallel ReLU of LeNet's 64x500 took 6.6 ms instead of 0.02 ms, a LeNet step went
from 14 to 70 ms), and parallel kernels cost several times the compile time.

Not compiled, because numpy measured faster: im2col/col2im (numpy's strided block copies
beat a scalar numba loop 3-20x on LeNet's convolutions; the convolution's cost is its GEMMs).

``active`` is True when numba is importable, NETFORGE_NO_JIT is not "1", and every array
given is a C-contiguous numpy array (None passes): anything else takes the reference path.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import numpy

_available: bool | None = None
_modules: dict[str, ModuleType] = {}


def available() -> bool:
    """numba can be imported (checked once, without importing it)."""
    global _available
    if _available is None:
        _available = importlib.util.find_spec("numba") is not None
    return _available


def enabled() -> bool:
    """Compiled kernels may be used now: numba is there and NETFORGE_NO_JIT is not "1"."""
    return os.environ.get("NETFORGE_NO_JIT", "") != "1" and available()


def active(*arrays) -> bool:
    """Use the compiled kernel for these arrays (None entries are ignored)?"""
    if not enabled():
        return False
    for a in arrays:
        if a is None:
            continue
        if type(a) is not numpy.ndarray or not a.flags.c_contiguous:
            return False
    return True


def load(name: str) -> ModuleType:
    """The kernel module ``name`` (imports numba on first use)."""
    module = _modules.get(name)
    if module is None:
        module = importlib.import_module(f"{__name__}.{name}")
        _modules[name] = module
    return module

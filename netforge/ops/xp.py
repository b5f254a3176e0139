"""Array-module plumbing shared by every kernel in ``netforge.ops``.

- ``get_array_module(*arrays)``: ``cupy`` if any argument is a CuPy array, else ``numpy``.
- ``allocate(spec, xp)``: turn a ``*_workspace_shapes`` dict into arrays (once, at reshape time);
  ``allocate_layout`` does it for lists of them (the plan allocates what layers declare).
- ``view_as(a, shape)``: a reshape that refuses to copy.
- ``scratch(ws, name, shape, dtype, xp)``: a named workspace array, or a fresh one.

Workspace convention (all of ``netforge.ops``): a kernel that needs scratch memory takes
``ws``, a dict of caller-owned arrays built once (at reshape time) by
``allocate(<op>_workspace_shapes(...))``; the spec maps a name to ``(shape, dtype)``. A
kernel never assumes anything about a workspace's contents on entry, so one dict may be
shared by layers that do not run concurrently (the one exception,
``conv_backward(reuse_col=True)``, says so). Convolution and pooling require ``ws``; the
elementwise, softmax, linear and loss kernels accept ``ws=None`` and then allocate their
(small or occasional) scratch per call, which is fine in tests and one-off calls but not on
a training step's hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy

Array = Any  # numpy.ndarray or cupy.ndarray; kept loose so that cupy stays optional
WorkspaceSpec = dict[str, tuple[tuple[int, ...], numpy.dtype]]


def get_array_module(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy ndarray, otherwise ``numpy``.

    CuPy is imported only when a CuPy array is actually seen, so CPU-only installs never pay
    for (or fail on) the import. An array type may name its module in a class attribute
    ``netforge_array_module`` (``backend.use_array_module``).
    """
    for a in arrays:
        named = getattr(type(a), "netforge_array_module", None)  # a stand-in device module
        if named is not None:
            return named
        if type(a).__module__.startswith("cupy"):
            import cupy

            if isinstance(a, cupy.ndarray):
                return cupy
    return numpy


def allocate(spec: Mapping[str, tuple[tuple[int, ...], Any]], xp: ModuleType = numpy) -> dict:
    """Allocate (uninitialised) workspace arrays from a ``*_workspace_shapes`` spec."""
    return {name: xp.empty(shape, dtype=dtype) for name, (shape, dtype) in spec.items()}


def allocate_layout(layout, xp: ModuleType = numpy):
    """``layout`` (lists and tuples of plain values and of ``*_workspace_shapes`` specs, e.g.
    an engine plan's slices) with each spec allocated as ``allocate`` does."""
    if isinstance(layout, Mapping):
        return allocate(layout, xp)
    if isinstance(layout, (list, tuple)):
        return type(layout)(allocate_layout(item, xp) for item in layout)
    return layout


def scratch(ws: Mapping[str, Array] | None, name: str, shape: tuple[int, ...], dtype: Any,
            xp: ModuleType) -> Array:
    """``ws[name]`` when the caller provided it, else a new (per-call) array."""
    if ws is not None and name in ws:
        return ws[name]
    return xp.empty(shape, dtype=dtype)


def view_as(a: Array, shape: tuple[int, ...]) -> Array:
    """Reshape ``a`` without copying; raise if ``a`` is not C-contiguous.

    Kernels write through reshaped views of their output arguments. ``ndarray.reshape`` on a
    non-contiguous array silently returns a copy, and results written into it would be lost.
    """
    if not a.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous array of shape {a.shape}, got strides "
                         f"{a.strides}")
    return a.reshape(shape)


def pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Accept ``k`` or ``(kh, kw)`` and return ``(kh, kw)``."""
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))


def is_cupy(xp) -> bool:
    """Whether ``xp`` is CuPy itself: the GPU kernels of ``ops/cuda`` take over only then, not
    for other numpy-like modules (the tests' host-read counting shim runs the xp code)."""
    return getattr(xp, "__name__", "") == "cupy"

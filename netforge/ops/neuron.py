"""Elementwise activation kernels, forward beside backward; all of them may run in place.

Any shape. In place is Caffe's idiom: top is bottom, so ``y is x`` in forward and, in
backward, ``dx is dy`` (the diffs are shared too) while the data argument is the shared blob.

    relu_workspace_shapes(shape, dtype, *, negative_slope) -> spec
    relu_forward(x, y, *, negative_slope=0.0, ws=None)          ws only when leaky
    relu_backward(dy, data, dx, *, negative_slope=0.0, ws=None) data: x, or y if slope >= 0
    sigmoid_forward(x, y)
    sigmoid_backward(dy, y, dx, *, ws=None)                     ws only when dx aliases
    tanh_forward(x, y)
    tanh_backward(dy, y, dx, *, ws=None)                        ws only when dx aliases
    tmp_workspace_shapes(shape, dtype) -> spec                  ``tmp`` for sigmoid/tanh
    dropout_forward(x, y, mask, ratio, rng)                     TRAIN; TEST is the identity
    dropout_backward(dy, mask, ratio, dx)

Outputs are assigned. ``ws`` follows ``netforge.ops._xp``: without it these kernels allocate
their scratch per call.
"""

from __future__ import annotations

from typing import Any

import numpy

from netforge.ops._xp import Array, WorkspaceSpec, get_array_module, scratch


def relu_workspace_shapes(shape: tuple[int, ...], dtype: numpy.dtype = numpy.float32, *,
                          negative_slope: float = 0.0) -> WorkspaceSpec:
    """ReLU's scratch: a bool ``mask`` (plain ReLU's backward), or for a leaky ReLU a ``tmp``
    of the data's dtype (forward and backward)."""
    if negative_slope == 0:
        return {"mask": (tuple(shape), numpy.dtype(bool))}
    return {"tmp": (tuple(shape), numpy.dtype(dtype))}


# The leaky forms use arithmetic on a temporary rather than numpy's masked ``where=`` ufuncs,
# which ran 10-30x slower on random sign patterns (measured).


def relu_forward(x: Array, y: Array, *, negative_slope: float = 0.0,
                 ws: dict | None = None) -> None:
    """y = max(x, 0) + negative_slope * min(x, 0)."""
    xp = get_array_module(x)
    if negative_slope == 0:
        xp.maximum(x, 0, out=y)
        return
    tmp = scratch(ws, "tmp", x.shape, x.dtype, xp)
    xp.minimum(x, 0, out=tmp)  # before y (which may be x) is written
    xp.maximum(x, 0, out=y)
    xp.multiply(tmp, negative_slope, out=tmp)
    xp.add(y, tmp, out=y)


def relu_backward(dy: Array, data: Array, dx: Array, *, negative_slope: float = 0.0,
                  ws: dict | None = None) -> None:
    """dx = dy where data > 0, else negative_slope * dy (Caffe counts 0 as negative).

    ``data`` is the bottom data x, or the top data y, which is what an in-place ReLU has
    left: for negative_slope >= 0, y > 0 exactly where x > 0.
    """
    xp = get_array_module(dy)
    if negative_slope == 0:
        mask = scratch(ws, "mask", dy.shape, bool, xp)
        xp.greater(data, 0, out=mask)
        xp.multiply(dy, mask, out=dx)
        return
    factor = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.greater(data, 0, out=factor)  # 1.0 / 0.0
    xp.multiply(factor, 1.0 - negative_slope, out=factor)
    xp.add(factor, negative_slope, out=factor)  # 1 or negative_slope
    xp.multiply(dy, factor, out=dx)


def sigmoid_forward(x: Array, y: Array) -> None:
    """y = 1 / (1 + exp(-x)), computed as 0.5 * tanh(0.5 * x) + 0.5, which cannot overflow."""
    xp = get_array_module(x)
    xp.multiply(x, 0.5, out=y)
    xp.tanh(y, out=y)
    xp.multiply(y, 0.5, out=y)
    xp.add(y, 0.5, out=y)


def _derivative_buffer(xp: Any, ws: dict | None, dy: Array, y: Array, dx: Array) -> Array:
    """Where to build the local derivative: dx itself, unless dx aliases dy or y (in place),
    in which case ws["tmp"]."""
    if xp.may_share_memory(dx, dy) or xp.may_share_memory(dx, y):
        return scratch(ws, "tmp", y.shape, y.dtype, xp)
    return dx


def sigmoid_backward(dy: Array, y: Array, dx: Array, *, ws: dict | None = None) -> None:
    """dx = dy * y * (1 - y), from the top data y."""
    xp = get_array_module(dy)
    tmp = _derivative_buffer(xp, ws, dy, y, dx)
    xp.subtract(1, y, out=tmp)
    xp.multiply(tmp, y, out=tmp)
    xp.multiply(tmp, dy, out=dx)


def tanh_forward(x: Array, y: Array) -> None:
    """y = tanh(x)."""
    get_array_module(x).tanh(x, out=y)


def tanh_backward(dy: Array, y: Array, dx: Array, *, ws: dict | None = None) -> None:
    """dx = dy * (1 - y^2), from the top data y."""
    xp = get_array_module(dy)
    tmp = _derivative_buffer(xp, ws, dy, y, dx)
    xp.multiply(y, y, out=tmp)
    xp.subtract(1, tmp, out=tmp)
    xp.multiply(tmp, dy, out=dx)


def tmp_workspace_shapes(shape: tuple[int, ...], dtype: numpy.dtype = numpy.float32
                         ) -> WorkspaceSpec:
    """``tmp`` (the data's shape and dtype) for an in-place sigmoid/tanh backward."""
    return {"tmp": (tuple(shape), numpy.dtype(dtype))}


def dropout_forward(x: Array, y: Array, mask: Array, ratio: float, rng: Any) -> None:
    """Inverted dropout (TRAIN): keep each unit with probability 1 - ratio and scale it by
    1 / (1 - ratio). In TEST the layer is the identity and does not call this.

    Args:
        x: input, any shape; y: output of the same shape, may be x.
        mask: x's shape. Preferably floating (x's dtype): it is assigned each unit's
            multiplier, 0 or 1 / (1 - ratio), which leaves backward a single product and
            needs no other scratch. A bool mask (assigned the kept units) also works but
            costs a per-call buffer for the random draws.
        ratio: drop probability, in [0, 1).
        rng: a ``numpy.random.Generator`` (``cupy.random.Generator`` on GPU) owned by the
            caller, so that runs are reproducible and no global state is touched.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"dropout ratio must be in [0, 1), got {ratio}")
    xp = get_array_module(x)
    scale = 1.0 / (1.0 - ratio)
    if mask.dtype == bool:
        draws = rng.random(size=mask.shape, dtype=numpy.float32)
        xp.greater_equal(draws, ratio, out=mask)
        xp.multiply(x, mask, out=y)
        xp.multiply(y, scale, out=y)
        return
    rng.random(dtype=mask.dtype, out=mask)
    # u >= ratio has probability 1 - ratio; the bool result lands in mask as 0.0 / 1.0.
    xp.greater_equal(mask, ratio, out=mask)
    xp.multiply(mask, scale, out=mask)
    xp.multiply(x, mask, out=y)


def dropout_backward(dy: Array, mask: Array, ratio: float, dx: Array) -> None:
    """dx = dy * mask's multipliers (dx may be dy); ``ratio`` matters only for a bool mask."""
    xp = get_array_module(dy)
    xp.multiply(dy, mask, out=dx)
    if mask.dtype == bool:
        xp.multiply(dx, 1.0 / (1.0 - ratio), out=dx)

"""Fully-connected, softmax, elementwise and concat kernels, forward beside backward.

    linear_workspace_shapes(w_shape, *, transpose=False, dtype) -> spec
    linear_forward(x, w, b, y, *, transpose=False)         x (M, K), w (N, K) / (K, N), y (M, N)
    linear_backward(dy, x, w, *, dx, dw, db, transpose=False, ws=None)
    softmax_workspace_shapes(shape, axis, dtype) -> spec
    softmax_forward(x, y, *, axis=1, ws=None)
    softmax_backward(y, dy, dx, *, axis=1, ws=None)
    eltwise_workspace_shapes(shape, dtype) -> spec
    eltwise_sum_forward(xs, coeffs, y, *, ws=None)         eltwise_sum_backward(dy, coeffs, dxs)
    eltwise_prod_forward(xs, y)                            eltwise_prod_backward(dy, xs, y, dxs,
                                                                                 *, stable=True)
    eltwise_max_forward(xs, y, argmax, *, ws=None)         eltwise_max_backward(dy, argmax, dxs,
                                                                                *, ws=None)
    concat_forward(xs, y, *, axis=1)                       concat_backward(dy, dxs, *, axis=1,
                                                                           widths=None)

Outputs and bottom gradients are assigned; parameter gradients (dw, db) accumulate (+=).
Entries of ``dxs`` may be None (gradient not wanted). Caffe's Slice layer is concat run
backwards: its forward is ``concat_backward`` and its backward ``concat_forward``.
``ws`` follows ``netforge.ops.xp``: without it these kernels allocate scratch per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy

from netforge.ops.fused import ChannelEpilogue, apply_epilogue
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, is_cupy, scratch, view_as

# --------------------------------------------------------------------------- linear


# Elements of the staging block of a weight gradient: the stage is (rows, w_shape[1]) with
# rows = what fits, so a large weight (AlexNet's fc6: 151 MB) costs a 4 MB stage, not a copy.
LINEAR_STAGE = 1 << 20


def _stage_rows(w_shape: tuple[int, ...]) -> int:
    return max(1, min(int(w_shape[0]), LINEAR_STAGE // max(int(w_shape[1]), 1)))


def linear_workspace_shapes(w_shape: tuple[int, ...], *, transpose: bool = False,
                            dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """``dw`` (a block of w's rows) and ``db`` (N,) stage the parameter gradients before
    they are accumulated: numpy's matmul has no beta = 1 form that would add into dw
    directly. The weight gradient is formed block of rows by block of rows."""
    n = w_shape[1] if transpose else w_shape[0]
    stage = (_stage_rows(w_shape), int(w_shape[1]))
    return {"dw": (stage, numpy.dtype(dtype)), "db": ((n,), numpy.dtype(dtype))}


def linear_forward(x: Array, w: Array, b: Array | None, y: Array, *,
                   transpose: bool = False, epilogue: ChannelEpilogue | None = None) -> None:
    """y = x @ w.T + b (x @ w when ``transpose``: Caffe's transposed weight layout), then
    ``epilogue`` (``netforge.ops.fused``, e.g. a fused ReLU) in the pass that adds b.

    Args:
        x: (M, K); w: (N, K), or (K, N) when transpose; b: (N,) or None; y: (M, N), assigned.
    """
    xp = get_array_module(x)
    if is_cupy(xp):  # cuDNN matmul: capturable, unlike cupy.matmul (ops/cuda/conv.py)
        from netforge.ops.cuda import conv as cuda_conv
        if cuda_conv.linear_forward(x, w, b, y, transpose=transpose):
            if epilogue is not None:
                y3 = view_as(y, (y.shape[0], y.shape[1], 1))
                apply_epilogue(y3, y3, None, epilogue)
            return
    xp.matmul(x, w if transpose else w.T, out=y)
    if epilogue is not None:  # while the product is still in cache
        y3 = view_as(y, (y.shape[0], y.shape[1], 1))
        apply_epilogue(y3, y3, b, epilogue)
    elif b is not None:
        xp.add(y, b, out=y)


def linear_backward(dy: Array, x: Array, w: Array, *, dx: Array | None, dw: Array | None,
                    db: Array | None, transpose: bool = False, ws: dict | None = None) -> None:
    """Gradients of ``linear_forward``: dx (M, K) assigned, dw and db accumulated."""
    xp = get_array_module(dy)
    if is_cupy(xp):  # cuDNN matmul (netforge/ops/cuda/conv.py)
        from netforge.ops.cuda import conv as cuda_conv
        if cuda_conv.linear_backward(dy, x, w, dx=dx, dw=dw, db=db, transpose=transpose):
            return
    if dw is not None:
        rows = _stage_rows(dw.shape)
        stage = scratch(ws, "dw", (rows, dw.shape[1]), dw.dtype, xp)
        for lo in range(0, dw.shape[0], rows):  # dw[lo:hi] += its block of the product
            hi = min(lo + rows, dw.shape[0])
            block = stage[:hi - lo]
            if transpose:  # dw (K, N) = x.T @ dy
                xp.matmul(x[:, lo:hi].T, dy, out=block)
            else:  # dw (N, K) = dy.T @ x
                xp.matmul(dy[:, lo:hi].T, x, out=block)
            xp.add(dw[lo:hi], block, out=dw[lo:hi])
    if db is not None:
        stage = scratch(ws, "db", db.shape, db.dtype, xp)
        xp.sum(dy, axis=0, out=stage)
        xp.add(db, stage, out=db)
    if dx is not None:
        xp.matmul(dy, w.T if transpose else w, out=dx)


# --------------------------------------------------------------------------- softmax


def outer_channels_inner(shape: Sequence[int], axis: int) -> tuple[int, int, int]:
    """(outer, channels, inner) sizes of ``shape`` around ``axis``."""
    outer = inner = 1
    for d in shape[:axis]:
        outer *= int(d)
    for d in shape[axis + 1:]:
        inner *= int(d)
    return outer, int(shape[axis]), inner


def softmax_workspace_shapes(shape: tuple[int, ...], axis: int = 1,
                             dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """``scale`` (outer, 1, inner): the per-position max, sum or dot product."""
    outer, _, inner = outer_channels_inner(shape, axis)
    return {"scale": ((outer, 1, inner), numpy.dtype(dtype))}


def softmax_forward(x: Array, y: Array, *, axis: int = 1, ws: dict | None = None) -> None:
    """y = exp(x - max) / sum(exp(x - max)) along ``axis``; any shape, y may be x."""
    xp = get_array_module(x)
    outer, c, inner = outer_channels_inner(x.shape, axis)
    x3, y3 = view_as(x, (outer, c, inner)), view_as(y, (outer, c, inner))
    s = scratch(ws, "scale", (outer, 1, inner), x.dtype, xp)
    xp.max(x3, axis=1, keepdims=True, out=s)
    xp.subtract(x3, s, out=y3)
    xp.exp(y3, out=y3)
    xp.sum(y3, axis=1, keepdims=True, out=s)
    xp.reciprocal(s, out=s)  # one division per position, then products over the channels
    xp.multiply(y3, s, out=y3)


def softmax_backward(y: Array, dy: Array, dx: Array, *, axis: int = 1,
                     ws: dict | None = None) -> None:
    """dx = y * (dy - sum(dy * y) along axis), from the top data y; dx may be dy."""
    xp = get_array_module(dy)
    outer, c, inner = outer_channels_inner(y.shape, axis)
    y3, dy3, dx3 = (view_as(a, (outer, c, inner)) for a in (y, dy, dx))
    s = scratch(ws, "scale", (outer, 1, inner), y.dtype, xp)
    _dot_channels(xp, dy3, y3, s)
    xp.subtract(dy3, s, out=dx3)
    xp.multiply(dx3, y3, out=dx3)


def _dot_channels(xp, a3: Array, b3: Array, out: Array) -> None:
    """out (outer, 1, inner) = sum over axis 1 of a3 * b3, without an (outer, C, inner)
    temporary on CPU (einsum reduces on the fly)."""
    if xp is numpy:
        numpy.einsum("oci,oci->oi", a3, b3, out=out[:, 0, :])
    else:  # CuPy's einsum takes no ``out``; its dedicated kernel belongs to the GPU path
        xp.sum(a3 * b3, axis=1, keepdims=True, out=out)


# --------------------------------------------------------------------------- eltwise


def eltwise_workspace_shapes(shape: tuple[int, ...], dtype: numpy.dtype = numpy.float32
                             ) -> WorkspaceSpec:
    """``tmp`` for SUM with a coefficient other than +-1; bool ``mask`` and ``index`` for
    MAX."""
    return {"tmp": (tuple(shape), numpy.dtype(dtype)), "mask": (tuple(shape), numpy.dtype(bool)),
            "index": (tuple(shape), numpy.dtype(numpy.intp))}


def eltwise_sum_forward(xs: Sequence[Array], coeffs: Sequence[float], y: Array, *,
                        ws: dict | None = None) -> None:
    """y = sum_i coeffs[i] * xs[i]; y must not alias any x."""
    xp = get_array_module(y)
    if coeffs[0] == 1:
        xp.copyto(y, xs[0])
    else:
        xp.multiply(xs[0], coeffs[0], out=y)
    for x, c in zip(xs[1:], coeffs[1:], strict=True):
        if c == 1:
            xp.add(y, x, out=y)
        elif c == -1:
            xp.subtract(y, x, out=y)
        else:
            tmp = scratch(ws, "tmp", y.shape, y.dtype, xp)  # no axpy in numpy
            xp.multiply(x, c, out=tmp)
            xp.add(y, tmp, out=y)


def eltwise_sum_backward(dy: Array, coeffs: Sequence[float], dxs: Sequence[Array | None]
                         ) -> None:
    """dxs[i] = coeffs[i] * dy."""
    xp = get_array_module(dy)
    for dx, c in zip(dxs, coeffs, strict=True):
        if dx is None:
            continue
        if c == 1:
            xp.copyto(dx, dy)
        else:
            xp.multiply(dy, c, out=dx)


def eltwise_prod_forward(xs: Sequence[Array], y: Array) -> None:
    """y = prod_i xs[i]."""
    xp = get_array_module(y)
    xp.multiply(xs[0], xs[1], out=y)
    for x in xs[2:]:
        xp.multiply(y, x, out=y)


def eltwise_prod_backward(dy: Array, xs: Sequence[Array], y: Array,
                          dxs: Sequence[Array | None], *, stable: bool = True) -> None:
    """dxs[i] = dy * prod_{j != i} xs[j] (``stable``, Caffe's default: no division, right
    where xs[i] == 0), or dy * y / xs[i]."""
    xp = get_array_module(dy)
    for i, dx in enumerate(dxs):
        if dx is None:
            continue
        if stable:
            others = [x for j, x in enumerate(xs) if j != i]
            xp.multiply(dy, others[0], out=dx)
            for x in others[1:]:
                xp.multiply(dx, x, out=dx)
        else:
            xp.divide(y, xs[i], out=dx)
            xp.multiply(dx, dy, out=dx)


def eltwise_max_forward(xs: Sequence[Array], y: Array, argmax: Array, *,
                        ws: dict | None = None) -> None:
    """y = max_i xs[i]; ``argmax`` (integer, y's shape) is assigned the winning bottom.

    Caffe's tie rule: between bottoms 0 and 1 a tie goes to 1 (bottom 0 must be strictly
    greater); from bottom 2 on, a later bottom must be strictly greater to win. Since winners
    only ever move to later bottoms, argmax = max(argmax, k * (x_k > y)): plain ufuncs, no
    masked ``where=`` (10-30x slower in numpy, measured). NaN propagates.
    """
    xp = get_array_module(y)
    mask = scratch(ws, "mask", y.shape, bool, xp)
    xp.greater(xs[0], xs[1], out=mask)
    xp.logical_not(mask, out=argmax)  # 0 where bottom 0 won, else 1
    xp.maximum(xs[0], xs[1], out=y)
    if len(xs) > 2:
        won = scratch(ws, "index", y.shape, numpy.intp, xp)
    for k, x in enumerate(xs[2:], start=2):
        xp.greater(x, y, out=mask)
        xp.multiply(mask, k, out=won)
        xp.maximum(argmax, won, out=argmax, casting="same_kind")
        xp.maximum(y, x, out=y)


def eltwise_max_backward(dy: Array, argmax: Array, dxs: Sequence[Array | None], *,
                         ws: dict | None = None) -> None:
    """dxs[i] = dy where bottom i won, else 0."""
    xp = get_array_module(dy)
    mask = scratch(ws, "mask", dy.shape, bool, xp)
    for i, dx in enumerate(dxs):
        if dx is None:
            continue
        xp.equal(argmax, i, out=mask)
        xp.multiply(dy, mask, out=dx)


# --------------------------------------------------------------------------- concat


def concat_forward(xs: Sequence[Array], y: Array, *, axis: int = 1) -> None:
    """y = xs joined along ``axis`` (Caffe's Concat; Slice's backward)."""
    get_array_module(y).concatenate(list(xs), axis=axis, out=y)


def concat_backward(dy: Array, dxs: Sequence[Array | None], *, axis: int = 1,
                    widths: Sequence[int] | None = None) -> None:
    """dxs[i] = the i-th piece of dy along ``axis`` (Concat's backward; Slice's forward).

    ``widths`` (each piece's size along axis) is needed only when some dxs are None.
    """
    xp = get_array_module(dy)
    if widths is None:
        if any(dx is None for dx in dxs):
            raise ValueError("concat_backward: pass widths when some gradients are None")
        widths = [dx.shape[axis] for dx in dxs]
    lead = (slice(None),) * axis
    start = 0
    for dx, width in zip(dxs, widths, strict=True):
        if dx is not None:
            xp.copyto(dx, dy[lead + (slice(start, start + width),)])
        start += width

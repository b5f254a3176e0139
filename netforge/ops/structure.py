"""Kernels for Caffe's structure layers, forward beside backward.

    slice_sizes(axis_size, slice_points, num_tops) -> [size of each piece]
    reshape_top_shape(bottom_shape, dims, axis=0, num_axes=-1) -> top shape
    reduction_workspace_shapes(x_shape, axis, op, dtype) -> spec
    reduction_forward(x, y, *, axis, op, coeff, ws)     reduction_backward(x, dy, dx, *, axis,
                                                                           op, coeff)
    argmax_top_shape(x_shape, *, top_k, axis, out_max_val) -> top shape
    argmax_forward(x, y, *, top_k, axis, out_max_val)   (no backward: Caffe has none)
    tile_forward(x, y, *, axis, tiles)                  tile_backward(dy, dx, *, axis, tiles)
    selected_rows(selector) -> indices of the non-zero entries
    filter_forward(x, rows, y)                          filter_backward(dy, rows, dx)
    batch_reindex_forward(x, index, y, *, ws)           batch_reindex_backward(dy, index, dx,
                                                                               *, ws)
    embed_forward(index, w, b, y, *, ws)                embed_backward(index, dy, dw, db, *, ws)

Caffe's Slice is concat run backwards: its kernels are ``concat_backward`` (forward) and
``concat_forward`` (backward) in ``netforge.ops.common``. Bottom gradients are assigned;
parameter gradients (dw, db) accumulate. Index inputs (BatchReindex, Embed) arrive as floats
and are truncated to integers as Caffe's ``static_cast<int>`` does; an index outside its
range raises ValueError (Caffe checks BatchReindex always and Embed only in debug builds).
``ws`` follows ``netforge.ops.xp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import numpy

from netforge.backend import range_checks
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, scratch, view_as

REDUCTIONS = ("SUM", "ASUM", "SUMSQ", "MEAN")

# --------------------------------------------------------------------------- shapes


def slice_sizes(axis_size: int, slice_points: Sequence[int], num_tops: int) -> list[int]:
    """Sizes of the pieces a Slice cuts ``axis_size`` into.

    With ``slice_points`` (strictly increasing, one fewer than the tops) the pieces end at
    those points; without, the axis is split into ``num_tops`` equal parts.
    """
    if slice_points:
        if len(slice_points) != num_tops - 1:
            raise ValueError(f"{len(slice_points)} slice_point value(s) for {num_tops} tops "
                             f"(give one fewer than the number of tops)")
        bounds = [0, *(int(p) for p in slice_points), axis_size]
        sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
        if any(s <= 0 for s in sizes):
            raise ValueError(f"slice_point values {list(slice_points)} must increase strictly "
                             f"and stay inside the axis of size {axis_size}")
        return sizes
    if axis_size % num_tops:
        raise ValueError(f"{num_tops} tops do not evenly divide the slice axis of size "
                         f"{axis_size}; give slice_point values")
    return [axis_size // num_tops] * num_tops


def reshape_top_shape(bottom_shape: Sequence[int], dims: Sequence[int], axis: int = 0,
                      num_axes: int = -1) -> tuple[int, ...]:
    """Caffe's ReshapeLayer shape rule.

    Axes ``axis`` .. ``axis + num_axes`` of the bottom (to the end when num_axes is -1; a
    negative axis counts from the end, -1 meaning *after* the last axis) are replaced by
    ``dims``. In ``dims`` a 0 copies the bottom dimension at the same position (counted from
    ``axis``) and one -1 is inferred so that the count is unchanged.
    """
    bottom_shape = tuple(int(d) for d in bottom_shape)
    ndim = len(bottom_shape)
    start = axis if axis >= 0 else ndim + axis + 1
    if not 0 <= start <= ndim:
        raise ValueError(f"axis {axis} is out of range for a {ndim}-D bottom")
    if num_axes < -1:
        raise ValueError(f"num_axes must be >= -1, got {num_axes}")
    end = ndim if num_axes == -1 else start + num_axes
    if end > ndim:
        raise ValueError(f"axis {axis} + num_axes {num_axes} runs past the bottom's {ndim} axes")
    dims = [int(d) for d in dims]
    if any(d < -1 for d in dims):
        raise ValueError(f"shape dims must be >= -1, got {dims}")
    if dims.count(-1) > 1:
        raise ValueError(f"shape {dims} has more than one -1; at most one dim can be inferred")
    new = list(dims)
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise ValueError(f"shape dim {i} is 0 but the bottom has no axis {start + i} "
                                 "to copy")
            new[i] = bottom_shape[start + i]
    count = prod(bottom_shape)
    if -1 in new:
        known = prod(bottom_shape[:start]) * prod(bottom_shape[end:]) * prod(
            d for d in new if d != -1)
        if known == 0 or count % known:
            raise ValueError(f"bottom count {count} is not divisible by the product of the "
                             f"given dims ({known})")
        new[new.index(-1)] = count // known
    top = (*bottom_shape[:start], *new, *bottom_shape[end:])
    if prod(top) != count:
        raise ValueError(f"shape {top} holds {prod(top)} values but the bottom "
                         f"{bottom_shape} holds {count}")
    return top


# --------------------------------------------------------------------------- reduction


def _num_dim(shape: Sequence[int], axis: int) -> tuple[int, int]:
    return prod(int(d) for d in shape[:axis]), prod(int(d) for d in shape[axis:])


def reduction_workspace_shapes(x_shape: tuple[int, ...], axis: int, op: str,
                               dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """ASUM stages |x| before summing; the other operations need no scratch."""
    if op != "ASUM":
        return {}
    return {"abs": (_num_dim(x_shape, axis), numpy.dtype(dtype))}


def _scale(op: str, coeff: float, dim: int) -> float:
    if op not in REDUCTIONS:
        raise ValueError(f"operation must be one of {', '.join(REDUCTIONS)}, got {op!r}")
    # MEAN is SUM with the coefficient divided by the reduced size (as Caffe folds it).
    return float(coeff) / dim if op == "MEAN" and dim else float(coeff)


def reduction_forward(x: Array, y: Array, *, axis: int, op: str = "SUM", coeff: float = 1.0,
                      ws: dict | None = None) -> None:
    """y[i] = coeff · reduce(x[i, ...]) over every axis from ``axis`` on.

    Args:
        x: any shape; y: x.shape[:axis] (0-D when axis is 0), assigned.
        op: "SUM", "ASUM" (sum of |x|), "SUMSQ" (sum of x²) or "MEAN".
    """
    xp = get_array_module(x)
    num, dim = _num_dim(x.shape, axis)
    scale = _scale(op, coeff, dim)
    x2 = view_as(x, (num, dim))
    y1 = view_as(y, (num,))
    if op == "SUMSQ":
        if xp is numpy:
            xp.einsum("ij,ij->i", x2, x2, out=y1)  # no x² temporary
        else:  # CuPy's einsum takes no ``out``
            xp.sum(x2 * x2, axis=1, out=y1)
    elif op == "ASUM":
        tmp = scratch(ws, "abs", (num, dim), x.dtype, xp)
        xp.abs(x2, out=tmp)
        xp.sum(tmp, axis=1, out=y1)
    else:
        xp.sum(x2, axis=1, out=y1)
    if scale != 1.0:
        xp.multiply(y1, scale, out=y1)


def reduction_backward(x: Array, dy: Array, dx: Array, *, axis: int, op: str = "SUM",
                       coeff: float = 1.0) -> None:
    """dx = coeff · dy[i] · (1, sign(x), 2x or 1/dim) for SUM, ASUM, SUMSQ, MEAN."""
    xp = get_array_module(x)
    num, dim = _num_dim(x.shape, axis)
    scale = _scale(op, coeff, dim)
    dx2 = view_as(dx, (num, dim))
    dy2 = view_as(dy, (num, 1))
    if op == "ASUM":
        xp.sign(view_as(x, (num, dim)), out=dx2)  # Caffe's sign: 0 at 0
        xp.multiply(dx2, dy2, out=dx2)
    elif op == "SUMSQ":
        xp.multiply(view_as(x, (num, dim)), dy2, out=dx2)
        scale *= 2.0
    else:
        dx2[...] = dy2
    if scale != 1.0:
        xp.multiply(dx2, scale, out=dx2)


# --------------------------------------------------------------------------- argmax


def argmax_top_shape(x_shape: Sequence[int], *, top_k: int, axis: int | None,
                     out_max_val: bool) -> tuple[int, ...]:
    """Caffe's ArgMax top: with ``axis``, x's shape with that axis set to top_k; without,
    (N, 1 or 2, top_k) padded with 1s to x's rank (at least 3 axes)."""
    if axis is not None:
        shape = [int(d) for d in x_shape]
        shape[axis] = top_k
        return tuple(shape)
    shape = [1] * max(len(x_shape), 3)
    shape[0] = int(x_shape[0])
    shape[1] = 2 if out_max_val else 1
    shape[2] = top_k
    return tuple(shape)


def argmax_forward(x: Array, y: Array, *, top_k: int = 1, axis: int | None = None,
                   out_max_val: bool = False) -> None:
    """The top_k largest entries along ``axis`` (or over each sample's flattened values).

    Ties rank the larger index first, as Caffe's sort of (value, index) pairs in descending
    order does. With ``axis``, y holds the indices, or the values when ``out_max_val``;
    without ``axis``, y[n, 0] holds the indices and, when ``out_max_val``, y[n, 1] the
    values. Sorting allocates; ArgMax is an inference-time layer without backward.
    """
    xp = get_array_module(x)
    if axis is None:
        x3 = view_as(x, (x.shape[0], 1, -1))
        ax = 2
    else:
        outer, dim = prod(x.shape[:axis]), x.shape[axis]
        x3 = view_as(x, (outer, dim, -1))
        ax = 1
    dim = x3.shape[1 if ax == 1 else 2]
    # Stable sort of the negated values along the reversed axis: equal values keep the
    # reversed order, i.e. the larger original index comes first.
    flipped = xp.flip(x3, axis=ax)
    order = xp.argsort(-flipped, axis=ax, kind="stable")
    order = order[:, :top_k] if ax == 1 else order[:, :, :top_k]
    values = xp.take_along_axis(flipped, order, axis=ax)
    indices = (dim - 1) - order
    if axis is None:
        y3 = view_as(y, (x.shape[0], 2 if out_max_val else 1, top_k))
        y3[:, 0, :] = indices[:, 0, :]
        if out_max_val:
            y3[:, 1, :] = values[:, 0, :]
        return
    y3 = view_as(y, (x3.shape[0], top_k, x3.shape[2]))
    y3[...] = values if out_max_val else indices


# --------------------------------------------------------------------------- tile


def tile_forward(x: Array, y: Array, *, axis: int, tiles: int) -> None:
    """y = ``tiles`` copies of each block x[i, ...] (axes from ``axis`` on), one after
    another along ``axis``: numpy's ``tile`` of the trailing block."""
    outer, inner = _num_dim(x.shape, axis)
    view_as(y, (outer, tiles, inner))[...] = view_as(x, (outer, 1, inner))


def tile_backward(dy: Array, dx: Array, *, axis: int, tiles: int) -> None:
    """dx = the sum of dy over the ``tiles`` copies."""
    xp = get_array_module(dy)
    outer, inner = _num_dim(dx.shape, axis)
    xp.sum(view_as(dy, (outer, tiles, inner)), axis=1, out=view_as(dx, (outer, inner)))


# --------------------------------------------------------------------------- filter


def selected_rows(selector: Array) -> Array:
    """Indices of the samples whose selector value is non-zero (Caffe's Filter rule).

    The count is data-dependent, so this allocates (a selector-sized index vector).
    """
    xp = get_array_module(selector)
    return xp.flatnonzero(view_as(selector, (selector.shape[0], -1))[:, 0])


def filter_forward(x: Array, rows: Array, y: Array) -> None:
    """y = x[rows] along the first axis; y has len(rows) samples."""
    xp = get_array_module(x)
    xp.take(x, rows, axis=0, out=y)


def filter_backward(dy: Array, rows: Array, dx: Array) -> None:
    """dx[rows] = dy; samples that were filtered out get zero gradient."""
    dx.fill(0)
    if len(rows):
        dx[rows] = dy


# --------------------------------------------------------------------------- batch reindex


def _indices(xp, values: Array, upper: int, out: Array, what: str) -> Array:
    """Truncate float indices to integers (into ``out``, values.size long) and check them
    against [0, upper) where ``backend.range_checks`` says so (host arrays, debug mode)."""
    idx = view_as(out, (values.size,))
    xp.copyto(idx, view_as(values, (values.size,)), casting="unsafe")
    if idx.size and range_checks(xp) and (int(idx.min()) < 0 or int(idx.max()) >= upper):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise ValueError(f"{what} {bad} is outside [0, {upper})")
    return idx


def batch_reindex_workspace_shapes(num_index: int) -> WorkspaceSpec:
    return {"index": ((num_index,), numpy.dtype(numpy.intp))}


def batch_reindex_forward(x: Array, index: Array, y: Array, *, ws: dict | None = None) -> None:
    """y[n] = x[index[n]] (index (M,) of sample numbers in [0, N))."""
    xp = get_array_module(x)
    idx = _indices(xp, index, x.shape[0], scratch(ws, "index", (index.size,), numpy.intp, xp),
                   "index")
    xp.take(x, idx, axis=0, out=y)


def batch_reindex_backward(dy: Array, index: Array, dx: Array, *,
                           ws: dict | None = None) -> None:
    """dx[k] = sum of dy[n] over every n with index[n] == k (repeats accumulate)."""
    xp = get_array_module(dy)
    idx = _indices(xp, index, dx.shape[0], scratch(ws, "index", (index.size,), numpy.intp, xp),
                   "index")
    dx.fill(0)
    if xp is numpy:
        numpy.add.at(dx, idx, dy)
    else:  # CuPy spells the unbuffered scatter-add differently
        import cupyx

        cupyx.scatter_add(dx, idx, dy)


# --------------------------------------------------------------------------- embed


def embed_workspace_shapes(num_index: int) -> WorkspaceSpec:
    return {"index": ((num_index,), numpy.dtype(numpy.intp))}


def embed_forward(index: Array, w: Array, b: Array | None, y: Array, *,
                  ws: dict | None = None) -> None:
    """y[..., :] = w[index[...]] + b: a row lookup in the (input_dim, num_output) table.

    Args:
        index: any shape, integer-valued floats in [0, input_dim).
        y: index.shape + (num_output,), assigned.
    Raises:
        ValueError: an index out of range or not a whole number.
    """
    xp = get_array_module(w)
    idx = _indices(xp, index, w.shape[0], scratch(ws, "index", (index.size,), numpy.intp, xp),
                   "index")
    whole = range_checks(xp) and bool(xp.all(idx == view_as(index, (index.size,))))
    if range_checks(xp) and not whole:  # Caffe's debug check
        raise ValueError("embedding indices must be whole numbers")
    y2 = view_as(y, (index.size, w.shape[1]))
    xp.take(w, idx, axis=0, out=y2)
    if b is not None:
        xp.add(y2, b, out=y2)


def embed_backward(index: Array, dy: Array, dw: Array | None, db: Array | None, *,
                   ws: dict | None = None) -> None:
    """dw[index[m]] += dy[m] (repeats accumulate) and db += Σ_m dy[m]; no input gradient."""
    xp = get_array_module(dy)
    dy2 = view_as(dy, (index.size, dy.shape[-1]))
    if dw is not None:
        idx = _indices(xp, index, dw.shape[0],
                       scratch(ws, "index", (index.size,), numpy.intp, xp), "index")
        if xp is numpy:
            numpy.add.at(dw, idx, dy2)
        else:
            import cupyx

            cupyx.scatter_add(dw, idx, dy2)
    if db is not None:
        db += dy2.sum(axis=0)

"""Caffe pooling kernels (MAX, AVE), forward beside backward.

    max_pool_workspace_shapes(x_shape, y_shape, *, index_dtype) -> spec
    max_pool_forward(x, y, argmax, *, kernel, stride, pad, ws)
    max_pool_backward(dy, argmax, dx, *, kernel, stride, pad, ws)
    ave_pool_workspace_shapes(x_shape, y_shape, *, dtype) -> spec
    ave_pool_forward(x, y, *, kernel, stride, pad, ws)
    ave_pool_backward(dy, dx, *, kernel, stride, pad, ws)

Caffe's rules: windows start at o·s − p; MAX ignores padding (a window value must be
strictly greater to win, so the first maximum in raster order wins, as in Caffe); AVE sums
only real pixels but divides by the window clipped to the padded extent [−p, size + p).
The loops run over the kh·kw kernel offsets, each a strided slice of the whole batch —
never over output pixels. The non-overlapping case (stride == kernel, no pad, sizes
divisible) is a reshape.
"""

from __future__ import annotations

import numpy

from netforge.ops._xp import Array, WorkspaceSpec, get_array_module, pair

_NEG_FLT_MAX = -float(numpy.finfo(numpy.float32).max)


def _offsets(kernel, stride, pad, in_hw, out_hw):
    """For each kernel offset (p, q): output slices and the matching input slices."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(pad)
    (h, w), (oh, ow) = in_hw, out_hw
    for p in range(kh):
        i0, i1, r0 = _valid(p - ph, sh, oh, h)
        if i0 >= i1:
            continue
        for q in range(kw):
            j0, j1, c0 = _valid(q - pw, sw, ow, w)
            if j0 >= j1:
                continue
            out = (slice(None), slice(None), slice(i0, i1), slice(j0, j1))
            src = (slice(None), slice(None), slice(r0, r0 + (i1 - i0 - 1) * sh + 1, sh),
                   slice(c0, c0 + (j1 - j0 - 1) * sw + 1, sw))
            yield out, src, (r0, sh, i1 - i0), (c0, sw, j1 - j0)


def _valid(offset: int, stride: int, out_size: int, in_size: int):
    """Outputs o in [o0, o1) with o·stride + offset inside [0, in_size); first input index."""
    o0 = max(0, -(offset // stride))
    o1 = min(out_size, (in_size - 1 - offset) // stride + 1)
    return o0, max(o0, o1), o0 * stride + offset


def _tiles(x_shape, y_shape, kernel, stride, pad) -> bool:
    """Non-overlapping windows that exactly tile the input."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(pad)
    return (kh, kw) == (sh, sw) and ph == pw == 0 and x_shape[2] == y_shape[2] * kh and (
        x_shape[3] == y_shape[3] * kw)


def max_pool_workspace_shapes(x_shape, y_shape, *, index_dtype=numpy.int32) -> WorkspaceSpec:
    """``index`` (OH, OW) flat input index of each window's origin; ``mask`` a bool scratch."""
    return {"mask": (tuple(y_shape), numpy.dtype(bool))}


def max_pool_forward(x: Array, y: Array, argmax: Array, *, kernel, stride, pad,
                     ws: dict) -> None:
    """y = max over each window; ``argmax`` = flat index h·W + w of the winner per output."""
    xp = get_array_module(x)
    width = x.shape[3]
    y.fill(_NEG_FLT_MAX)
    argmax.fill(-1)
    mask = ws["mask"]
    for out, src, (r0, sh, nr), (c0, sw, nc) in _offsets(kernel, stride, pad, x.shape[2:],
                                                        y.shape[2:]):
        ys, xs, am, m = y[out], x[src], argmax[out], mask[out]
        xp.greater(xs, ys, out=m)
        xp.copyto(ys, xs, where=m)
        index = (xp.arange(nr)[:, None] * sh + r0) * width + (xp.arange(nc)[None, :] * sw + c0)
        xp.copyto(am, index.astype(am.dtype), where=m)


def max_pool_backward(dy: Array, argmax: Array, dx: Array, *, kernel, stride, pad,
                      ws: dict) -> None:
    """Route each output's gradient to its window's winner (summed where windows overlap)."""
    xp = get_array_module(dy)
    width = dx.shape[3]
    dx.fill(0)
    mask = ws["mask"]
    for out, src, (r0, sh, nr), (c0, sw, nc) in _offsets(kernel, stride, pad, dx.shape[2:],
                                                        dy.shape[2:]):
        index = (xp.arange(nr)[:, None] * sh + r0) * width + (xp.arange(nc)[None, :] * sw + c0)
        m = mask[out]
        xp.equal(argmax[out], index, out=m)
        dx[src] += dy[out] * m


def ave_pool_workspace_shapes(x_shape, y_shape, *, dtype=numpy.float32) -> WorkspaceSpec:
    return {"divisor": (tuple(y_shape[2:]), numpy.dtype(dtype))}


def _divisor(ws, in_hw, out_hw, kernel, stride, pad):
    """Each window's size clipped to the padded extent (Caffe's AVE divisor)."""
    xp = get_array_module(ws["divisor"])
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(pad)
    (h, w), (oh, ow) = in_hw, out_hw
    hs = xp.arange(oh) * sh - ph
    wsx = xp.arange(ow) * sw - pw
    rows = xp.minimum(hs + kh, h + ph) - hs
    cols = xp.minimum(wsx + kw, w + pw) - wsx
    xp.multiply(rows[:, None], cols[None, :], out=ws["divisor"], casting="unsafe")
    return ws["divisor"]


def ave_pool_forward(x: Array, y: Array, *, kernel, stride, pad, ws: dict) -> None:
    xp = get_array_module(x)
    if _tiles(x.shape, y.shape, kernel, stride, pad):
        (kh, kw) = pair(kernel)
        n, c, oh, ow = y.shape
        xp.mean(x.reshape(n, c, oh, kh, ow, kw), axis=(3, 5), out=y)
        return
    y.fill(0)
    for out, src, _, _ in _offsets(kernel, stride, pad, x.shape[2:], y.shape[2:]):
        y[out] += x[src]
    y /= _divisor(ws, x.shape[2:], y.shape[2:], kernel, stride, pad)


def ave_pool_backward(dy: Array, dx: Array, *, kernel, stride, pad, ws: dict) -> None:
    dx.fill(0)
    divisor = _divisor(ws, dx.shape[2:], dy.shape[2:], kernel, stride, pad)
    for out, src, _, _ in _offsets(kernel, stride, pad, dx.shape[2:], dy.shape[2:]):
        dx[src] += dy[out] / divisor[out[2:]]

"""Caffe pooling kernels (MAX, AVE), forward beside backward.

Shapes: x (N, C, H, W), y (N, C, OH, OW) with OH, OW from
``netforge.ops.vision.pool_output_size`` (re-exported here). ``kernel``, ``stride``, ``pad``
take an int or an ``(h, w)`` pair; global pooling is kernel = (H, W), stride 1, pad 0.

    max_pool_workspace_shapes(x_shape, y_shape, *, index_dtype=intp) -> spec
    max_pool_forward(x, y, argmax, *, kernel, stride, pad, ws)
    max_pool_backward(dy, argmax, dx, *, kernel, stride, pad, ws)
    ave_pool_workspace_shapes(x_shape, y_shape, *, dtype=float32) -> spec
    ave_pool_forward(x, y, *, kernel, stride, pad, ws)
    ave_pool_backward(dy, dx, *, kernel, stride, pad, ws)

Caffe's rules: window (oh, ow) starts at (oh*sh - ph, ow*sw - pw); MAX ignores padding and
keeps the first maximum in row-major window order (strict ``>``); AVE sums only real pixels
but divides by the window clipped to the padded extent [-p, size + p).

The loops run over the kh*kw kernel offsets, each one strided slice of the whole batch
clipped to the outputs whose pixel lies in the image (so no padded copy is made), never over
output pixels. When the windows tile the image (stride == kernel, no pad, divisible sizes;
global pooling included) x is reshaped to (N, C, OH, kh, OW, kw) instead: no clipping, no
fills, and AVE is a single mean. Outputs and dx are assigned. Only index vectors of length
OH or OW (no batch or channel axis) are created per call.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy

from netforge.ops._xp import Array, WorkspaceSpec, get_array_module, pair, view_as
from netforge.ops.vision import IntPair, _stop, _valid_range, pool_output_size

__all__ = ["pool_output_size", "max_pool_workspace_shapes", "max_pool_forward",
           "max_pool_backward", "ave_pool_workspace_shapes", "ave_pool_forward",
           "ave_pool_backward"]

# Caffe initialises a max-pool window to -FLT_MAX (whatever the Dtype) and keeps an index of
# -1 until a value beats it; padding never takes part.
_NEG_FLT_MAX = -float(numpy.finfo(numpy.float32).max)


class _PoolGeom(NamedTuple):
    n: int
    c: int
    h: int
    w: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    tiled: bool  # windows tile the image exactly: x reshapes to (N, C, OH, kh, OW, kw)

    @property
    def is_global(self) -> bool:
        return self.tiled and self.oh == 1 and self.ow == 1


def _pool_geom(x_shape: tuple[int, ...], y_shape: tuple[int, ...], kernel: IntPair,
               stride: IntPair, pad: IntPair) -> _PoolGeom:
    n, c, h, w = x_shape
    oh, ow = y_shape[2], y_shape[3]
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(pad)
    if ph >= kh or pw >= kw:
        raise ValueError(f"pooling: pad {(ph, pw)} must be smaller than kernel {(kh, kw)}")
    tiled = (ph == 0 and pw == 0 and oh * kh == h and ow * kw == w
             and (sh == kh or oh == 1) and (sw == kw or ow == 1))
    return _PoolGeom(n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, tiled)


def _offsets(geo: _PoolGeom):
    """Kernel offsets (i, j) in Caffe's row-major window order, with their clipped ranges.

    Yields (i, j, out_rows, out_cols, in_rows, in_cols): slices of the outputs whose window
    pixel (i, j) lies inside the image, and the strided input slices holding those pixels.
    Offsets that fall in the padding for every output are skipped.
    """
    for i in range(geo.kh):
        oh0, oh1, h0 = _valid_range(i - geo.ph, geo.sh, geo.oh, geo.h)
        if oh1 == oh0:
            continue
        hs = slice(h0, _stop(h0, oh1 - oh0, geo.sh), geo.sh)
        for j in range(geo.kw):
            ow0, ow1, w0 = _valid_range(j - geo.pw, geo.sw, geo.ow, geo.w)
            if ow1 == ow0:
                continue
            ws_ = slice(w0, _stop(w0, ow1 - ow0, geo.sw), geo.sw)
            yield i, j, slice(oh0, oh1), slice(ow0, ow1), hs, ws_


def _window_origin(xp, geo: _PoolGeom, dtype) -> Array:
    """(OH, OW) flat index h*W + w of each window's top-left corner (may lie in the pad).

    Small (no batch or channel axis), so computing it per call is cheap.
    """
    rows = xp.arange(geo.oh, dtype=dtype) * geo.sh - geo.ph
    cols = xp.arange(geo.ow, dtype=dtype) * geo.sw - geo.pw
    return rows[:, None] * geo.w + cols[None, :]


def max_pool_workspace_shapes(x_shape: tuple[int, ...], y_shape: tuple[int, ...], *,
                              index_dtype: numpy.dtype = numpy.intp) -> WorkspaceSpec:
    """Scratch for MAX pooling.

    ``mask``: flat bool, big enough for x or y (kernels view its front as either shape:
    comparisons against y per offset, or against x for global pooling's backward);
    ``index`` (OH, OW) of the argmax dtype: the flat input index of each window's pixel for
    the current offset.
    """
    size = max(_size(x_shape), _size(y_shape))
    return {"mask": ((size,), numpy.dtype(bool)),
            "index": ((y_shape[2], y_shape[3]), numpy.dtype(index_dtype))}


def _size(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


def _front(flat: Array, shape: tuple[int, ...]) -> Array:
    """The first prod(shape) elements of a flat workspace, viewed as ``shape``."""
    return flat[:_size(shape)].reshape(shape)


def max_pool_forward(x: Array, y: Array, argmax: Array, *, kernel: IntPair, stride: IntPair,
                     pad: IntPair = 0, ws: dict) -> None:
    """Caffe MAX pooling.

    Args:
        x: (N, C, H, W) input.
        y: (N, C, OH, OW) output (sizes from ``pool_output_size``), assigned.
        argmax: (N, C, OH, OW) integer array, assigned the flat index h*W + w of each
            window's maximum. Padding never wins; among equal values the first in row-major
            window order wins (Caffe's strict ``>``). A window whose values are all
            <= -FLT_MAX keeps y = -FLT_MAX and index -1, as in Caffe (not on the reshape fast
            paths, which start from the window's first pixel).
        ws: workspace from ``max_pool_workspace_shapes``.
    """
    xp = get_array_module(x)
    geo = _pool_geom(x.shape, y.shape, kernel, stride, pad)
    mask, index = _front(ws["mask"], y.shape), ws["index"]
    if geo.is_global:
        x3 = view_as(x, (geo.n, geo.c, geo.h * geo.w))
        xp.argmax(x3, axis=2, out=view_as(argmax, (geo.n, geo.c)))
        xp.max(x3, axis=2, out=view_as(y, (geo.n, geo.c)))
        return
    origin = _window_origin(xp, geo, index.dtype)
    if geo.tiled:
        # Every window is full and disjoint: start from pixel (0, 0), no clipping, no fill.
        x6 = view_as(x, (geo.n, geo.c, geo.oh, geo.kh, geo.ow, geo.kw))
        xp.copyto(y, x6[:, :, :, 0, :, 0])
        xp.copyto(argmax, origin)
        for i in range(geo.kh):
            for j in range(geo.kw):
                if i == 0 and j == 0:
                    continue
                v = x6[:, :, :, i, :, j]
                xp.greater(v, y, out=mask)
                xp.copyto(y, v, where=mask)
                xp.add(origin, i * geo.w + j, out=index)
                xp.copyto(argmax, index, where=mask)
        return
    y.fill(_NEG_FLT_MAX)
    argmax.fill(-1)
    for i, j, ro, co, hs, ws_ in _offsets(geo):
        v, ys, ms = x[:, :, hs, ws_], y[:, :, ro, co], mask[:, :, ro, co]
        xp.greater(v, ys, out=ms)
        xp.copyto(ys, v, where=ms)
        xp.add(origin[ro, co], i * geo.w + j, out=index[ro, co])
        xp.copyto(argmax[:, :, ro, co], index[ro, co], where=ms)


def max_pool_backward(dy: Array, argmax: Array, dx: Array, *, kernel: IntPair,
                      stride: IntPair, pad: IntPair = 0, ws: dict) -> None:
    """dx (N, C, H, W), assigned: each dy (N, C, OH, OW) added at its window's argmax."""
    xp = get_array_module(dy)
    geo = _pool_geom(dx.shape, dy.shape, kernel, stride, pad)
    index = ws["index"]
    if geo.is_global:
        # One compare against 0..H*W-1 marks every argmax; the product places dy there.
        hw = geo.h * geo.w
        mask3 = _front(ws["mask"], (geo.n, geo.c, hw))
        xp.equal(view_as(argmax, (geo.n, geo.c, 1)), xp.arange(hw, dtype=argmax.dtype),
                 out=mask3)
        xp.multiply(mask3, view_as(dy, (geo.n, geo.c, 1)), out=view_as(dx, (geo.n, geo.c, hw)))
        return
    mask = _front(ws["mask"], dy.shape)
    origin = _window_origin(xp, geo, index.dtype)
    if geo.tiled:
        # Disjoint windows: every dx pixel is written exactly once, so no fill and no adds.
        dx6 = view_as(dx, (geo.n, geo.c, geo.oh, geo.kh, geo.ow, geo.kw))
        for i in range(geo.kh):
            for j in range(geo.kw):
                xp.add(origin, i * geo.w + j, out=index)
                xp.equal(argmax, index, out=mask)
                xp.multiply(dy, mask, out=dx6[:, :, :, i, :, j])
        return
    dx.fill(0)
    for i, j, ro, co, hs, ws_ in _offsets(geo):
        ms, d = mask[:, :, ro, co], dx[:, :, hs, ws_]
        xp.add(origin[ro, co], i * geo.w + j, out=index[ro, co])
        xp.equal(argmax[:, :, ro, co], index[ro, co], out=ms)
        xp.add(d, dy[:, :, ro, co], out=d, where=ms)


def _ave_scale(xp, geo: _PoolGeom, dtype) -> Array:
    """(OH, OW) 1/window size, the window clipped to the padded extent [-p, H+p) (Caffe).

    Without padding, ceil mode with stride > kernel can place a last window wholly past the
    image, where Caffe divides 0 by 0; such a window averages to 0 here instead of NaN.
    """
    def sizes(out, k, s, p, size):
        start = xp.arange(out) * s - p
        return xp.minimum(start + k, size + p) - start

    area = sizes(geo.oh, geo.kh, geo.sh, geo.ph, geo.h)[:, None] * sizes(
        geo.ow, geo.kw, geo.sw, geo.pw, geo.w)[None, :]
    scale = xp.zeros(area.shape, dtype=dtype)
    xp.divide(1.0, area, out=scale, where=area > 0, casting="unsafe")
    return scale


def ave_pool_workspace_shapes(x_shape: tuple[int, ...], y_shape: tuple[int, ...], *,
                              dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """Scratch for AVE pooling: ``scaled`` (y's shape) holds dy / window size in backward
    (unused when the windows tile the image)."""
    return {"scaled": (tuple(y_shape), numpy.dtype(dtype))}


def ave_pool_forward(x: Array, y: Array, *, kernel: IntPair, stride: IntPair,
                     pad: IntPair = 0, ws: dict) -> None:
    """Caffe AVE pooling: x (N, C, H, W) -> y (N, C, OH, OW), assigned.

    Sums only real pixels but divides by the window clipped to the padded extent, so border
    windows count their padding as zeros and ceil-mode overhang beyond the padding not at all.
    """
    xp = get_array_module(x)
    geo = _pool_geom(x.shape, y.shape, kernel, stride, pad)
    # sum + scale rather than xp.mean, which allocates an output-sized temporary (measured).
    if geo.is_global:  # a reduction over one contiguous axis: no iterator buffering
        xp.sum(view_as(x, (geo.n, geo.c, geo.h * geo.w)), axis=2,
               out=view_as(y, (geo.n, geo.c)))
        xp.multiply(y, 1.0 / (geo.h * geo.w), out=y)
        return
    if geo.tiled:
        xp.sum(view_as(x, (geo.n, geo.c, geo.oh, geo.kh, geo.ow, geo.kw)), axis=(3, 5), out=y)
        xp.multiply(y, 1.0 / (geo.kh * geo.kw), out=y)
        return
    y.fill(0)
    for _, _, ro, co, hs, ws_ in _offsets(geo):
        ys = y[:, :, ro, co]
        xp.add(ys, x[:, :, hs, ws_], out=ys)
    xp.multiply(y, _ave_scale(xp, geo, y.dtype), out=y)


def ave_pool_backward(dy: Array, dx: Array, *, kernel: IntPair, stride: IntPair,
                      pad: IntPair = 0, ws: dict) -> None:
    """dx (N, C, H, W), assigned: dy (N, C, OH, OW) / window size spread over each window."""
    xp = get_array_module(dy)
    geo = _pool_geom(dx.shape, dy.shape, kernel, stride, pad)
    if geo.tiled:
        dy6 = view_as(dy, (geo.n, geo.c, geo.oh, 1, geo.ow, 1))
        xp.multiply(dy6, 1.0 / (geo.kh * geo.kw),
                    out=view_as(dx, (geo.n, geo.c, geo.oh, geo.kh, geo.ow, geo.kw)))
        return
    scaled = ws["scaled"]
    xp.multiply(dy, _ave_scale(xp, geo, dy.dtype), out=scaled)
    dx.fill(0)
    for _, _, ro, co, hs, ws_ in _offsets(geo):
        d = dx[:, :, hs, ws_]
        xp.add(d, scaled[:, :, ro, co], out=d)

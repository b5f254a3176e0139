"""Caffe pooling kernels (MAX, AVE, STOCHASTIC), forward beside backward.

Shapes: x (N, C, H, W), y (N, C, OH, OW) with OH, OW from
``netforge.ops.vision.pool_output_size`` (re-exported here). ``kernel``, ``stride``, ``pad``
take an int or an ``(h, w)`` pair; global pooling is kernel = (H, W), stride 1, pad 0.

    max_pool_workspace_shapes(x_shape, y_shape, *, index_dtype=intp) -> spec
    max_pool_forward(x, y, argmax, *, kernel, stride, pad, ws)
    max_pool_backward(dy, argmax, dx, *, kernel, stride, pad, ws)
    ave_pool_workspace_shapes(x_shape, y_shape, *, dtype=float32) -> spec
    ave_pool_forward(x, y, *, kernel, stride, pad, ws)
    ave_pool_backward(dy, dx, *, kernel, stride, pad, ws)
    stochastic_pool_workspace_shapes(x_shape, y_shape, *, dtype, index_dtype) -> spec
    stochastic_pool_forward_train(x, y, index, *, kernel, stride, rng, ws)
    stochastic_pool_backward_train(dy, index, dx, *, kernel, stride, ws)
    stochastic_pool_forward_test(x, y, *, kernel, stride, ws)
    stochastic_pool_backward_test(dy, x, dx, *, kernel, stride, ws)

Caffe's rules: window (oh, ow) starts at (oh*sh - ph, ow*sw - pw); MAX ignores padding and
keeps the first maximum in row-major window order (strict ``>``); AVE sums only real pixels
but divides by the window clipped to the padded extent [-p, size + p).

The loops run over the kh*kw kernel offsets, each one strided slice of the whole batch
clipped to the outputs whose pixel lies in the image (so no padded copy is made), never over
output pixels. When the windows tile the image (stride == kernel, no pad, divisible sizes)
the backward passes write dx through a reshaped (N, C, OH, kh, OW, kw) view, one
assignment per offset, with no fill and no adds; global pooling reduces over one contiguous
H*W axis. Everything is a plain ufunc: numpy's masked ``where=`` forms and its reductions
over the (kh, kw) axes of a reshaped view ran 10-30x slower (measured). Outputs and dx are
assigned. Only index vectors of length OH, OW or H*W (no batch or channel axis) are
created per call.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy

from netforge.ops._xp import Array, WorkspaceSpec, get_array_module, pair, view_as
from netforge.ops.vision import IntPair, _stop, _valid_range, pool_output_size

__all__ = ["pool_output_size", "max_pool_workspace_shapes", "max_pool_forward",
           "max_pool_backward", "ave_pool_workspace_shapes", "ave_pool_forward",
           "ave_pool_backward", "stochastic_pool_workspace_shapes",
           "stochastic_pool_forward_train", "stochastic_pool_backward_train",
           "stochastic_pool_forward_test", "stochastic_pool_backward_test"]

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


def _size(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


def _align(nbytes: int) -> int:
    return -(-nbytes // 64) * 64


def max_pool_workspace_shapes(x_shape: tuple[int, ...], y_shape: tuple[int, ...], *,
                              index_dtype: numpy.dtype = numpy.intp) -> WorkspaceSpec:
    """Scratch for MAX pooling, whatever the data dtype.

    ``scratch``: raw bytes that the kernels carve into a bool mask (y's size, x's for global
    pooling) and two y-sized temporaries of up to 8-byte elements (one of the argmax dtype,
    one of the data dtype); ``index`` (OH, OW) of the argmax dtype.
    """
    ny = _size(y_shape)
    nbytes = _align(max(_size(x_shape), ny)) + 2 * _align(8 * ny)
    return {"scratch": ((nbytes,), numpy.dtype(numpy.uint8)),
            "index": ((y_shape[2], y_shape[3]), numpy.dtype(index_dtype))}


def _carve(ws: dict, x_shape: tuple[int, ...], y_shape: tuple[int, ...], index_dtype,
           data_dtype) -> tuple[Array, Array, Array]:
    """(bool mask of y's shape, index-typed y temporary, data-typed y temporary)."""
    raw = ws["scratch"]
    ny = _size(y_shape)
    a = _align(max(_size(x_shape), ny))
    b = a + _align(8 * ny)
    mask = raw[:ny].view(bool).reshape(y_shape)
    itmp = raw[a:a + ny * numpy.dtype(index_dtype).itemsize].view(index_dtype).reshape(y_shape)
    ftmp = raw[b:b + ny * numpy.dtype(data_dtype).itemsize].view(data_dtype).reshape(y_shape)
    return mask, itmp, ftmp


def max_pool_forward(x: Array, y: Array, argmax: Array, *, kernel: IntPair, stride: IntPair,
                     pad: IntPair = 0, ws: dict) -> None:
    """Caffe MAX pooling.

    Args:
        x: (N, C, H, W) input.
        y: (N, C, OH, OW) output (sizes from ``pool_output_size``), assigned.
        argmax: (N, C, OH, OW) integer array, assigned the flat index h*W + w of each
            window's maximum. Padding never wins and NaN is skipped; among equal values the
            first in row-major window order wins (Caffe's strict ``>`` scan). A window with
            no pixel (ceil mode, stride > kernel, no pad) gets y = -FLT_MAX and index -1, as
            in Caffe. (Caffe would also give -1 for a window whose pixels are all <= -FLT_MAX;
            here such a pixel's own index is reported.)
        ws: workspace from ``max_pool_workspace_shapes``.

    Two sweeps over the kh*kw offsets, both plain ufuncs: the maxima with ``fmax``, then, in
    reverse offset order, ``argmax += (v == y) * (index - argmax)`` so that the first
    maximum's index is the one left. (numpy's masked ``where=`` forms ran 10-30x slower.)
    """
    xp = get_array_module(x)
    geo = _pool_geom(x.shape, y.shape, kernel, stride, pad)
    if geo.is_global:
        x3 = view_as(x, (geo.n, geo.c, geo.h * geo.w))
        xp.argmax(x3, axis=2, out=view_as(argmax, (geo.n, geo.c)))
        xp.max(x3, axis=2, out=view_as(y, (geo.n, geo.c)))
        return
    eq, itmp, _ = _carve(ws, x.shape, y.shape, argmax.dtype, x.dtype)
    index, origin = ws["index"], _window_origin(xp, geo, ws["index"].dtype)
    offsets = list(_offsets(geo))
    y.fill(_NEG_FLT_MAX)
    for _, _, ro, co, hs, ws_ in offsets:
        ys = y[:, :, ro, co]
        xp.fmax(ys, x[:, :, hs, ws_], out=ys)
    argmax.fill(-1)
    for i, j, ro, co, hs, ws_ in reversed(offsets):
        es, ts, am = eq[:, :, ro, co], itmp[:, :, ro, co], argmax[:, :, ro, co]
        xp.equal(x[:, :, hs, ws_], y[:, :, ro, co], out=es)
        xp.add(origin[ro, co], i * geo.w + j, out=index[ro, co])
        xp.subtract(index[ro, co], am, out=ts)
        xp.multiply(ts, es, out=ts)
        xp.add(am, ts, out=am)


def max_pool_backward(dy: Array, argmax: Array, dx: Array, *, kernel: IntPair,
                      stride: IntPair, pad: IntPair = 0, ws: dict) -> None:
    """dx (N, C, H, W), assigned: each dy (N, C, OH, OW) added at its window's argmax."""
    xp = get_array_module(dy)
    geo = _pool_geom(dx.shape, dy.shape, kernel, stride, pad)
    if geo.is_global:
        # One compare against 0..H*W-1 marks every argmax; the product places dy there.
        hw = geo.h * geo.w
        mask3 = ws["scratch"][:dx.size].view(bool).reshape(geo.n, geo.c, hw)
        xp.equal(view_as(argmax, (geo.n, geo.c, 1)), xp.arange(hw, dtype=argmax.dtype),
                 out=mask3)
        xp.multiply(mask3, view_as(dy, (geo.n, geo.c, 1)), out=view_as(dx, (geo.n, geo.c, hw)))
        return
    eq, _, ftmp = _carve(ws, dx.shape, dy.shape, argmax.dtype, dy.dtype)
    index, origin = ws["index"], _window_origin(xp, geo, ws["index"].dtype)
    if geo.tiled:
        # Disjoint windows: every dx pixel is written exactly once, so no fill and no adds.
        dx6 = view_as(dx, (geo.n, geo.c, geo.oh, geo.kh, geo.ow, geo.kw))
        for i in range(geo.kh):
            for j in range(geo.kw):
                xp.add(origin, i * geo.w + j, out=index)
                xp.equal(argmax, index, out=eq)
                xp.multiply(dy, eq, out=dx6[:, :, :, i, :, j])
        return
    dx.fill(0)
    for i, j, ro, co, hs, ws_ in _offsets(geo):
        es, fs, d = eq[:, :, ro, co], ftmp[:, :, ro, co], dx[:, :, hs, ws_]
        xp.add(origin[ro, co], i * geo.w + j, out=index[ro, co])
        xp.equal(argmax[:, :, ro, co], index[ro, co], out=es)
        xp.multiply(dy[:, :, ro, co], es, out=fs)
        xp.add(d, fs, out=d)


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
    if geo.is_global:  # one reduction over a contiguous axis
        xp.sum(view_as(x, (geo.n, geo.c, geo.h * geo.w)), axis=2,
               out=view_as(y, (geo.n, geo.c)))
        xp.multiply(y, 1.0 / (geo.h * geo.w), out=y)
        return
    # Strided adds, one per offset: numpy's reduction over the (kh, kw) axes of a reshaped
    # view, and xp.mean, ran 15x slower (measured).
    offsets = list(_offsets(geo))
    if geo.tiled:
        _, _, ro, co, hs, ws_ = offsets[0]
        xp.copyto(y, x[:, :, hs, ws_])
        offsets = offsets[1:]
    else:
        y.fill(0)
    for _, _, ro, co, hs, ws_ in offsets:
        ys = y[:, :, ro, co]
        xp.add(ys, x[:, :, hs, ws_], out=ys)
    if geo.tiled:
        xp.multiply(y, 1.0 / (geo.kh * geo.kw), out=y)
    else:
        xp.multiply(y, _ave_scale(xp, geo, y.dtype), out=y)


def ave_pool_backward(dy: Array, dx: Array, *, kernel: IntPair, stride: IntPair,
                      pad: IntPair = 0, ws: dict) -> None:
    """dx (N, C, H, W), assigned: dy (N, C, OH, OW) / window size spread over each window."""
    xp = get_array_module(dy)
    geo = _pool_geom(dx.shape, dy.shape, kernel, stride, pad)
    if geo.is_global:
        xp.multiply(view_as(dy, (geo.n, geo.c, 1)), 1.0 / (geo.h * geo.w),
                    out=view_as(dx, (geo.n, geo.c, geo.h * geo.w)))
        return
    if geo.tiled:
        # Disjoint windows: one strided write per offset (a single broadcasting multiply
        # into the 6-D view ran 4x slower, its inner loop being kw long).
        dx6 = view_as(dx, (geo.n, geo.c, geo.oh, geo.kh, geo.ow, geo.kw))
        for i in range(geo.kh):
            for j in range(geo.kw):
                xp.multiply(dy, 1.0 / (geo.kh * geo.kw), out=dx6[:, :, :, i, :, j])
        return
    scaled = ws["scaled"]
    xp.multiply(dy, _ave_scale(xp, geo, dy.dtype), out=scaled)
    dx.fill(0)
    for _, _, ro, co, hs, ws_ in _offsets(geo):
        d = dx[:, :, hs, ws_]
        xp.add(d, scaled[:, :, ro, co], out=d)


# --------------------------------------------------------------------------- STOCHASTIC
# Caffe (Zeiler & Fergus 2013), GPU-only there; no padding. The inputs are meant to be
# non-negative (after a ReLU): a window's values are its sampling weights.
#
# TRAIN: per window draw u ~ U[0, 1), then walk the window in row-major order summing values
# and take the first pixel whose running sum reaches u * (window sum); the output is that
# pixel's value, and backward routes the gradient to it, exactly as MAX pooling routes to
# its argmax (so the index uses the argmax format and MAX's backward kernel).
# TEST: the probability-weighted average sum(x^2) / sum(x), Caffe's denominator starting
# from FLT_MIN so that an all-zero window gives 0.

_FLT_MIN = float(numpy.finfo(numpy.float32).tiny)


def _no_pad_geom(x_shape, y_shape, kernel, stride) -> _PoolGeom:
    return _pool_geom(x_shape, y_shape, kernel, stride, 0)


def stochastic_pool_workspace_shapes(x_shape: tuple[int, ...], y_shape: tuple[int, ...], *,
                                     dtype: numpy.dtype = numpy.float32,
                                     index_dtype: numpy.dtype = numpy.intp) -> WorkspaceSpec:
    """Scratch for STOCHASTIC pooling (both phases): MAX pooling's workspace (its backward
    is TRAIN's), plus y-shaped ``total``, ``running``, ``weighted``, ``tmp`` (data dtype)
    and ``pending``, ``hit`` (bool)."""
    spec = max_pool_workspace_shapes(x_shape, y_shape, index_dtype=index_dtype)
    for name in ("total", "running", "weighted", "tmp"):
        spec[name] = (tuple(y_shape), numpy.dtype(dtype))
    for name in ("pending", "hit"):
        spec[name] = (tuple(y_shape), numpy.dtype(bool))
    return spec


def _window_sums(xp, x: Array, total: Array, offsets, start: float) -> None:
    """total (N, C, OH, OW) = start + the sum of each window's pixels."""
    total.fill(start)
    for _, _, ro, co, hs, ws_ in offsets:
        t = total[:, :, ro, co]
        xp.add(t, x[:, :, hs, ws_], out=t)


def _uniform(xp, rng, out: Array) -> None:
    """out ~ U[0, 1) from the numpy Generator ``rng`` (drawn on the host for CuPy)."""
    if xp is numpy and out.dtype in (numpy.float32, numpy.float64):
        rng.random(out=out, dtype=out.dtype)
    else:
        out[...] = xp.asarray(rng.random(out.shape))


def stochastic_pool_forward_train(x: Array, y: Array, index: Array, *, kernel: IntPair,
                                  stride: IntPair, rng, ws: dict) -> None:
    """Sample one pixel per window with probability proportional to its value.

    Args:
        x: (N, C, H, W) input, non-negative.
        y: (N, C, OH, OW) output, assigned the sampled values.
        index: (N, C, OH, OW) integer array, assigned the flat index h*W + w of each sample
            (-1 for a window with no pixel, ceil mode with stride > kernel; its y is 0).
        rng: a ``numpy.random.Generator`` (the layer's seeded generator).
        ws: workspace from ``stochastic_pool_workspace_shapes``.
    """
    xp = get_array_module(x)
    geo = _no_pad_geom(x.shape, y.shape, kernel, stride)
    total, running, pending, hit = ws["total"], ws["running"], ws["pending"], ws["hit"]
    flat, origin = ws["index"], _window_origin(xp, geo, ws["index"].dtype)
    offsets = list(_offsets(geo))
    _window_sums(xp, x, total, offsets, start=0)
    threshold = ws["tmp"]
    _uniform(xp, rng, threshold)
    xp.multiply(threshold, total, out=threshold)
    # One pass over the offsets in Caffe's row-major order; ``pending`` marks the windows
    # whose running sum has not reached the threshold yet.
    running.fill(0)
    pending.fill(True)
    y.fill(0)
    index.fill(-1)
    for i, j, ro, co, hs, ws_ in offsets:
        xs, rs, ps, hts = x[:, :, hs, ws_], running[:, :, ro, co], pending[:, :, ro, co], \
            hit[:, :, ro, co]
        xp.add(rs, xs, out=rs)
        xp.greater_equal(rs, threshold[:, :, ro, co], out=hts)
        xp.logical_and(hts, ps, out=hts)  # reached here, first time
        xp.logical_xor(ps, hts, out=ps)
        xp.add(origin[ro, co], i * geo.w + j, out=flat[ro, co])
        xp.copyto(y[:, :, ro, co], xs, where=hts)
        xp.copyto(index[:, :, ro, co], flat[ro, co], where=hts)


def stochastic_pool_backward_train(dy: Array, index: Array, dx: Array, *, kernel: IntPair,
                                   stride: IntPair, ws: dict) -> None:
    """dx (N, C, H, W), assigned: each dy added at its window's sampled pixel."""
    max_pool_backward(dy, index, dx, kernel=kernel, stride=stride, pad=0, ws=ws)


def stochastic_pool_forward_test(x: Array, y: Array, *, kernel: IntPair, stride: IntPair,
                                 ws: dict) -> None:
    """y (N, C, OH, OW), assigned: sum(x^2) / (FLT_MIN + sum(x)) over each window."""
    xp = get_array_module(x)
    geo = _no_pad_geom(x.shape, y.shape, kernel, stride)
    offsets = list(_offsets(geo))
    total, tmp = ws["total"], ws["tmp"]
    _window_sums(xp, x, total, offsets, start=_FLT_MIN)
    y.fill(0)
    for _, _, ro, co, hs, ws_ in offsets:
        xs, ys, ms = x[:, :, hs, ws_], y[:, :, ro, co], tmp[:, :, ro, co]
        xp.multiply(xs, xs, out=ms)
        xp.add(ys, ms, out=ys)
    xp.divide(y, total, out=y)


def stochastic_pool_backward_test(dy: Array, x: Array, dx: Array, *, kernel: IntPair,
                                  stride: IntPair, ws: dict) -> None:
    """dx (N, C, H, W), assigned: the gradient of ``stochastic_pool_forward_test`` at x.

    With S = FLT_MIN + sum(x) and y = sum(x^2) / S, dy/dx_k = (2 x_k - y) / S. (Caffe
    leaves TEST-phase backward undefined, routing to stale TRAIN samples; this is the exact
    derivative of what TEST computes.) y is recomputed from x, so an in-place layer above
    that changed the top cannot corrupt the gradient.
    """
    xp = get_array_module(dy)
    geo = _no_pad_geom(x.shape, dy.shape, kernel, stride)
    offsets = list(_offsets(geo))
    total, weighted, scaled, tmp = ws["total"], ws["weighted"], ws["running"], ws["tmp"]
    _window_sums(xp, x, total, offsets, start=_FLT_MIN)
    weighted.fill(0)
    for _, _, ro, co, hs, ws_ in offsets:
        xs, ys, ts = x[:, :, hs, ws_], weighted[:, :, ro, co], tmp[:, :, ro, co]
        xp.multiply(xs, xs, out=ts)
        xp.add(ys, ts, out=ys)
    xp.divide(weighted, total, out=weighted)
    xp.divide(dy, total, out=scaled)
    dx.fill(0)
    for _, _, ro, co, hs, ws_ in offsets:
        xs, d, ts = x[:, :, hs, ws_], dx[:, :, hs, ws_], tmp[:, :, ro, co]
        xp.multiply(xs, 2, out=ts)
        xp.subtract(ts, weighted[:, :, ro, co], out=ts)
        xp.multiply(ts, scaled[:, :, ro, co], out=ts)
        xp.add(d, ts, out=d)

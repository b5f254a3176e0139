"""Caffe's STOCHASTIC pooling (Zeiler & Fergus 2013), forward beside backward.

    stochastic_pool_workspace_shapes(x_shape, y_shape, *, kernel, stride, dtype,
                                     index_dtype) -> spec
    stochastic_pool_forward_train(x, y, index, *, kernel, stride, rng, ws)
    stochastic_pool_backward_train(dy, index, dx, *, kernel, stride, ws)
    stochastic_pool_forward_test(x, y, *, kernel, stride, ws)
    stochastic_pool_backward_test(dy, x, dx, *, kernel, stride, ws)

Shapes and window geometry as in ``netforge.ops.pooling`` (whose MAX workspace and backward
TRAIN reuses); no padding. The loops work on strided slices of x clipped to the outputs
whose pixel lies in the image.
"""

from __future__ import annotations

import numpy

from netforge.ops.pooling import (
    PoolGeometry,
    max_pool_backward,
    max_pool_workspace_shapes,
    pool_geometry,
    window_offsets,
    window_origin,
)
from netforge.ops.vision import IntPair
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module

__all__ = ["stochastic_pool_workspace_shapes", "stochastic_pool_forward_train",
           "stochastic_pool_backward_train", "stochastic_pool_forward_test",
           "stochastic_pool_backward_test"]

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


def _no_pad_geom(x_shape, y_shape, kernel, stride) -> PoolGeometry:
    return pool_geometry(x_shape, y_shape, kernel, stride, 0)


def stochastic_pool_workspace_shapes(x_shape: tuple[int, ...], y_shape: tuple[int, ...], *,
                                     kernel: IntPair, stride: IntPair,
                                     dtype: numpy.dtype = numpy.float32,
                                     index_dtype: numpy.dtype = numpy.intp) -> WorkspaceSpec:
    """Scratch for STOCHASTIC pooling (both phases): MAX pooling's workspace (its backward
    is TRAIN's), plus y-shaped ``total``, ``running``, ``weighted``, ``tmp`` (data dtype)
    and ``pending``, ``hit`` (bool)."""
    spec = max_pool_workspace_shapes(x_shape, y_shape, kernel=kernel, stride=stride,
                                     index_dtype=index_dtype, dtype=dtype)
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
    """out ~ U[0, 1) from ``rng``: a RandomStream (on the array's device, either module) or
    a numpy Generator (drawn on the host for CuPy)."""
    if hasattr(rng, "uniform_at_least") or (
            xp is numpy and out.dtype in (numpy.float32, numpy.float64)):
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
        rng: the layer's ``RandomStream`` (ops/random.py) or a ``numpy.random.Generator``.
        ws: workspace from ``stochastic_pool_workspace_shapes``.
    """
    xp = get_array_module(x)
    geo = _no_pad_geom(x.shape, y.shape, kernel, stride)
    total, running, pending, hit = ws["total"], ws["running"], ws["pending"], ws["hit"]
    flat, origin = ws["index"], window_origin(xp, geo, ws["index"].dtype)
    offsets = list(window_offsets(geo))
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
    _weighted_average(xp, x, y, list(window_offsets(geo)), ws)


def _weighted_average(xp, x: Array, out: Array, offsets, ws: dict) -> None:
    """out (N, C, OH, OW) = sum(x^2) / (FLT_MIN + sum(x)) over each window, leaving that
    denominator in ws["total"] (``ws["tmp"]`` is scratch)."""
    total, tmp = ws["total"], ws["tmp"]
    _window_sums(xp, x, total, offsets, start=_FLT_MIN)
    out.fill(0)
    for _, _, ro, co, hs, ws_ in offsets:
        xs, os_, ts = x[:, :, hs, ws_], out[:, :, ro, co], tmp[:, :, ro, co]
        xp.multiply(xs, xs, out=ts)
        xp.add(os_, ts, out=os_)
    xp.divide(out, total, out=out)


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
    offsets = list(window_offsets(geo))
    total, weighted, scaled, tmp = ws["total"], ws["weighted"], ws["running"], ws["tmp"]
    _weighted_average(xp, x, weighted, offsets, ws)  # y, recomputed; S left in total
    xp.divide(dy, total, out=scaled)
    dx.fill(0)
    for _, _, ro, co, hs, ws_ in offsets:
        xs, d, ts = x[:, :, hs, ws_], dx[:, :, hs, ws_], tmp[:, :, ro, co]
        xp.multiply(xs, 2, out=ts)
        xp.subtract(ts, weighted[:, :, ro, co], out=ts)
        xp.multiply(ts, scaled[:, :, ro, co], out=ts)
        xp.add(d, ts, out=d)

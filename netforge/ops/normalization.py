"""Normalisation kernels (Caffe's BatchNorm, Scale/Bias, MVN, LRN), forward beside backward.

Shapes. Per-channel kernels take 3-D views ``(outer, channels, inner)`` of the blobs, made by
the layer with ``view_as``: BatchNorm (N, C, H*W), Scale/Bias (count before axis, the
parameter's count, count after it). MVN takes ``(rows, dim)``: one row per sample (across
channels) or per (sample, channel). LRN takes (N, C, H, W).

    row_sums(a, out, b=None)                       out[...] = Σ_last a (· b)
    channel_sums(a, out, *, b=None, accumulate=False, ws=None)
                                                   out[c] (+)= Σ_{o,i} a[o,c,i] (· b[o,c,i])
    batch_norm_workspace_shapes(shape3, dtype) -> spec
    batch_norm_forward_train(x, y, x_norm, mean, var, inv_std, *, eps, ws=None)
    batch_norm_update_stats(mean_acc, var_acc, factor_acc, mean, var, *, fraction, ws=None)
    batch_norm_global_stats(mean_acc, var_acc, factor_acc, mean, inv_std, *, eps, ws=None)
    batch_norm_forward_global(x, y, mean, inv_std)
    batch_norm_backward_train(dy, x_norm, inv_std, dx, *, ws=None)
    batch_norm_backward_global(dy, inv_std, dx)
    scale_forward(x, scale, y) / scale_backward(dy, scale, dx)     y = x * scale[c]
    bias_forward(x, bias, y)                                        y = x + bias[c]
    mvn_workspace_shapes(shape2, dtype) -> spec
    mvn_forward(x, y, sigma, *, normalize_variance, eps, ws=None)
    mvn_backward(dy, y, sigma, dx, *, normalize_variance, eps, ws=None)
    lrn_workspace_shapes(shape, dtype) -> spec
    lrn_forward(x, y, scale, inv_pow, *, size, alpha, beta, k, region, ws=None)
    lrn_backward(dy, x, scale, inv_pow, dx, *, size, alpha, beta, region, ws=None)

Every kernel may run in place (y is x, dx is dy) except LRN. Reductions go through
``numpy.einsum`` over the last (contiguous) axis, which ran 2-3x faster than ``sum`` or a
multiply followed by ``sum`` (measured on (32, 256, 784) float32), and needs no scratch for
the product. Arrays that forward keeps for backward (x_norm, mean, inv_std, sigma, scale,
inv_pow) are the caller's, passed explicitly; ``ws`` holds only scratch.
"""

from __future__ import annotations

import numpy

from netforge.ops import compiled
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, is_cupy, scratch

# --------------------------------------------------------------------------- reductions


def row_sums(a: Array, out: Array, b: Array | None = None) -> None:
    """``out[...] = Σ_k a[..., k]`` (or of ``a * b``) over the last axis."""
    xp = get_array_module(a)
    operands = (a,) if b is None else (a, b)
    spec = "...k->..." if b is None else "...k,...k->..."
    if xp is numpy:
        numpy.einsum(spec, *operands, out=out)
    else:  # CuPy's einsum has no ``out=``
        out[...] = xp.einsum(spec, *operands)


def channel_sums(a: Array, out: Array, *, b: Array | None = None, accumulate: bool = False,
                 ws: dict | None = None) -> None:
    """``out[c] = Σ_{o,i} a[o, c, i]`` (or of ``a * b``), added to ``out`` if ``accumulate``.

    Args:
        a, b: (O, C, I). out: (C,). ws: ``rows`` (O, C) and, to accumulate, ``vec`` (C,).
    """
    xp = get_array_module(a)
    o, c, _ = a.shape
    rows = scratch(ws, "rows", (o, c), a.dtype, xp)
    row_sums(a, rows, b)
    if not accumulate:
        xp.sum(rows, axis=0, out=out)
        return
    vec = scratch(ws, "vec", (c,), a.dtype, xp)
    xp.sum(rows, axis=0, out=vec)
    xp.add(out, vec, out=out)


def channel_sum_workspace_shapes(shape3: tuple[int, ...], dtype=numpy.float32) -> WorkspaceSpec:
    """Scratch for ``channel_sums`` over an (O, C, I) array."""
    o, c, _ = shape3
    return {"rows": ((o, c), numpy.dtype(dtype)), "vec": ((c,), numpy.dtype(dtype))}


def _col(v: Array) -> Array:
    """A per-channel vector (C,) as (C, 1), broadcasting against (O, C, I)."""
    return v[:, None]


# --------------------------------------------------------------------------- batch norm


def batch_norm_workspace_shapes(shape3: tuple[int, ...], dtype=numpy.float32) -> WorkspaceSpec:
    """Scratch for the TRAIN-mode kernels: ``tmp`` (N, C, S), ``rows`` (N, C), ``vec``,
    ``vec2`` (C,), and ``pair`` (2, C), the backward sums one ``reduce`` call sums over
    data-parallel ranks."""
    n, c, _ = shape3
    dt = numpy.dtype(dtype)
    return {"tmp": (tuple(shape3), dt), "rows": ((n, c), dt), "vec": ((c,), dt),
            "vec2": ((c,), dt), "pair": ((2, c), dt)}


def batch_norm_forward_train(x: Array, y: Array, x_norm: Array | None, mean: Array, var: Array,
                             inv_std: Array, *, eps: float, ws: dict | None = None,
                             reduce=None, count: int | None = None) -> None:
    """Normalise with the batch statistics: y = (x - mean) / sqrt(var + eps) per channel.

    Args:
        x, y: (N, C, S); y may be x. x_norm: (N, C, S) or None; receives a copy of y, which
            backward needs even after a later in-place layer (Scale) overwrote the top.
        mean, var, inv_std: (C,) outputs: the batch mean, the *biased* batch variance (as
            Caffe normalises with it), and 1 / sqrt(var + eps).
        reduce, count: statistics of a batch spread over data-parallel ranks: ``reduce(a)``
            sums the (C,) array ``a`` over the ranks in place (twice: Σ x, then
            Σ (x - mean)^2, the same two-pass form), ``count`` is N * S over all of them.
    """
    if reduce is None and compiled.active(x, y, x_norm, mean, var, inv_std):
        compiled.load("normalization").batch_norm_forward_train(x, y, x_norm, mean, var,
                                                                inv_std, eps)
        return
    xp = get_array_module(x)
    n, c, s = x.shape
    rows = scratch(ws, "rows", (n, c), x.dtype, xp)
    inv_count = 1.0 / (count or n * s)
    row_sums(x, rows)
    xp.sum(rows, axis=0, out=mean)
    if reduce is not None:
        reduce(mean)
    xp.multiply(mean, inv_count, out=mean)
    xp.subtract(x, _col(mean), out=y)
    row_sums(y, rows, y)  # Σ (x - mean)^2, Caffe's E((X - EX)^2) form
    xp.sum(rows, axis=0, out=var)
    if reduce is not None:
        reduce(var)
    xp.multiply(var, inv_count, out=var)
    xp.add(var, eps, out=inv_std)
    xp.sqrt(inv_std, out=inv_std)
    xp.reciprocal(inv_std, out=inv_std)
    xp.multiply(y, _col(inv_std), out=y)
    if x_norm is not None:
        xp.copyto(x_norm, y)


def batch_norm_update_stats(mean_acc: Array, var_acc: Array, factor_acc: Array, mean: Array,
                            var: Array, *, fraction: float, count: int,
                            ws: dict | None = None) -> None:
    """Caffe's running accumulators, updated after each TRAIN forward:

    factor <- factor * fraction + 1; mean_acc <- mean_acc * fraction + mean;
    var_acc <- var_acc * fraction + m / (m - 1) * var   (m = ``count`` = N * S, unbiased).

    Everything stays on the array's device (no host round trip for the scalar factor).
    """
    xp = get_array_module(mean_acc)
    xp.multiply(factor_acc, fraction, out=factor_acc)
    xp.add(factor_acc, 1, out=factor_acc)
    xp.multiply(mean_acc, fraction, out=mean_acc)
    xp.add(mean_acc, mean, out=mean_acc)
    correction = count / (count - 1) if count > 1 else 1.0
    unbiased = scratch(ws, "vec", var.shape, var.dtype, xp)
    xp.multiply(var, correction, out=unbiased)
    xp.multiply(var_acc, fraction, out=var_acc)
    xp.add(var_acc, unbiased, out=var_acc)


def batch_norm_global_stats(mean_acc: Array, var_acc: Array, factor_acc: Array, mean: Array,
                            inv_std: Array, *, eps: float, ws: dict | None = None) -> None:
    """The stored statistics: mean = mean_acc / factor, inv_std = 1 / sqrt(var_acc / factor
    + eps), where a zero factor (never trained) counts as 1 / factor = 0, as in Caffe."""
    xp = get_array_module(mean_acc)
    inv_factor = scratch(ws, "factor", factor_acc.shape, factor_acc.dtype, xp)
    # (f != 0) / (f + (f == 0)) is 1/f, or 0 when f == 0, without dividing by zero.
    xp.equal(factor_acc, 0, out=inv_factor)
    xp.add(inv_factor, factor_acc, out=inv_factor)
    xp.reciprocal(inv_factor, out=inv_factor)
    xp.multiply(inv_factor, factor_acc != 0, out=inv_factor)
    xp.multiply(mean_acc, inv_factor, out=mean)
    xp.multiply(var_acc, inv_factor, out=inv_std)
    xp.add(inv_std, eps, out=inv_std)
    xp.sqrt(inv_std, out=inv_std)
    xp.reciprocal(inv_std, out=inv_std)


def batch_norm_forward_global(x: Array, y: Array, mean: Array, inv_std: Array) -> None:
    """y = (x - mean) * inv_std per channel; x, y (N, C, S), y may be x."""
    if compiled.active(x, y, mean, inv_std):
        compiled.load("normalization").batch_norm_forward_global(x, y, mean, inv_std)
        return
    xp = get_array_module(x)
    xp.subtract(x, _col(mean), out=y)
    xp.multiply(y, _col(inv_std), out=y)


def batch_norm_backward_train(dy: Array, x_norm: Array, inv_std: Array, dx: Array, *,
                              ws: dict | None = None, reduce=None,
                              count: int | None = None) -> None:
    """Through the batch statistics (Caffe's formula, exact for the forward above):

    dx = (dy - mean(dy) - x_norm * mean(dy * x_norm)) * inv_std, means per channel over
    N and S. dx may be dy. ``reduce``, ``count``: the means over a batch spread over
    data-parallel ranks (as in ``batch_norm_forward_train``; one call on a (2, C) array).
    """
    if reduce is None and compiled.active(dy, x_norm, inv_std, dx):
        compiled.load("normalization").batch_norm_backward_train(dy, x_norm, inv_std, dx)
        return
    xp = get_array_module(dy)
    n, c, s = dy.shape
    pair = scratch(ws, "pair", (2, c), dy.dtype, xp)
    mean_dy, mean_dy_xn = pair[0], pair[1]
    channel_sums(dy, mean_dy, ws=ws)  # (no accumulate: only ws["rows"] is used)
    channel_sums(dy, mean_dy_xn, b=x_norm, ws=ws)
    if reduce is not None:
        reduce(pair)
    # Fold -1/m and inv_std into the per-channel factors before touching the big arrays.
    factor = -1.0 / (count or n * s)
    xp.multiply(mean_dy, inv_std, out=mean_dy)
    xp.multiply(mean_dy, factor, out=mean_dy)
    xp.multiply(mean_dy_xn, inv_std, out=mean_dy_xn)
    xp.multiply(mean_dy_xn, factor, out=mean_dy_xn)
    tmp = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.multiply(x_norm, _col(mean_dy_xn), out=tmp)
    xp.add(tmp, _col(mean_dy), out=tmp)
    xp.multiply(dy, _col(inv_std), out=dx)
    xp.add(dx, tmp, out=dx)


def batch_norm_backward_global(dy: Array, inv_std: Array, dx: Array) -> None:
    """With stored statistics the layer is affine per channel: dx = dy * inv_std."""
    get_array_module(dy).multiply(dy, _col(inv_std), out=dx)


# --------------------------------------------------------------------------- scale, bias


def scale_forward(x: Array, scale: Array, y: Array) -> None:
    """y = x * scale[c]; x, y (O, C, I), scale (C,); y may be x."""
    get_array_module(x).multiply(x, _col(scale), out=y)


def scale_backward(dy: Array, scale: Array, dx: Array) -> None:
    """dx = dy * scale[c]; dx may be dy. (The scale's own gradient is ``channel_sums(dy,
    b=x)``, the bias's ``channel_sums(dy)``.)"""
    get_array_module(dy).multiply(dy, _col(scale), out=dx)


def bias_forward(x: Array, bias: Array, y: Array) -> None:
    """y = x + bias[c]; x, y (O, C, I), bias (C,); y may be x."""
    get_array_module(x).add(x, _col(bias), out=y)


# --------------------------------------------------------------------------- MVN


def mvn_workspace_shapes(shape2: tuple[int, ...], dtype=numpy.float32) -> WorkspaceSpec:
    """Scratch for MVN backward: ``tmp`` (R, D), ``vec``/``vec2``/``vec3`` (R,)."""
    rows = shape2[0]
    dt = numpy.dtype(dtype)
    return {"tmp": (tuple(shape2), dt), "vec": ((rows,), dt), "vec2": ((rows,), dt),
            "vec3": ((rows,), dt)}


def mvn_forward(x: Array, y: Array, sigma: Array, *, normalize_variance: bool, eps: float,
                ws: dict | None = None) -> None:
    """Caffe's MVN: y = x - mean(x) per row, then (if normalize_variance) divided by
    sqrt(var) + eps — eps is added to the standard deviation, not the variance.

    Args:
        x, y: (R, D); y may be x. sigma: (R,) output, sqrt of the biased row variance
            (kept for backward; untouched when not normalizing).
    """
    xp = get_array_module(x)
    rows, dim = x.shape
    mean = scratch(ws, "vec", (rows,), x.dtype, xp)
    row_sums(x, mean)
    xp.multiply(mean, 1.0 / dim, out=mean)
    xp.subtract(x, mean[:, None], out=y)
    if not normalize_variance:
        return
    row_sums(y, sigma, y)
    xp.multiply(sigma, 1.0 / dim, out=sigma)
    xp.sqrt(sigma, out=sigma)
    denominator = scratch(ws, "vec2", (rows,), x.dtype, xp)
    xp.add(sigma, eps, out=denominator)
    xp.divide(y, denominator[:, None], out=y)


def mvn_backward(dy: Array, y: Array, sigma: Array, dx: Array, *, normalize_variance: bool,
                 eps: float, ws: dict | None = None) -> None:
    """Gradient of ``mvn_forward``; dx may be dy.

    Mean only: dx = dy - mean(dy). With the variance, d = sigma + eps:
    dx = (dy - mean(dy) - y * mean(dy * y) * d / sigma) / d. Caffe leaves out the factor
    d / sigma (1 + eps / sigma, within 1e-9 of 1 for its default eps); it is kept here so
    that the gradient stays exact for any eps. A constant row (sigma 0) has y = 0, where the
    term vanishes.
    """
    xp = get_array_module(dy)
    rows, dim = dy.shape
    mean_dy = scratch(ws, "vec", (rows,), dy.dtype, xp)
    row_sums(dy, mean_dy)
    xp.multiply(mean_dy, 1.0 / dim, out=mean_dy)
    if not normalize_variance:
        xp.subtract(dy, mean_dy[:, None], out=dx)
        return
    mean_dy_y = scratch(ws, "vec2", (rows,), dy.dtype, xp)
    row_sums(dy, mean_dy_y, y)
    xp.multiply(mean_dy_y, 1.0 / dim, out=mean_dy_y)
    ratio = scratch(ws, "vec3", (rows,), dy.dtype, xp)  # d / sigma, or 1 where sigma == 0
    xp.equal(sigma, 0, out=ratio)
    xp.add(ratio, sigma, out=ratio)
    xp.reciprocal(ratio, out=ratio)
    xp.multiply(ratio, eps, out=ratio)
    xp.add(ratio, 1, out=ratio)  # 1 + eps / sigma = d / sigma
    xp.multiply(mean_dy_y, ratio, out=mean_dy_y)
    tmp = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.multiply(y, mean_dy_y[:, None], out=tmp)
    xp.add(tmp, mean_dy[:, None], out=tmp)
    xp.subtract(dy, tmp, out=dx)
    xp.add(sigma, eps, out=ratio)  # now d
    xp.divide(dx, ratio[:, None], out=dx)


# --------------------------------------------------------------------------- LRN

ACROSS_CHANNELS = "ACROSS_CHANNELS"
WITHIN_CHANNEL = "WITHIN_CHANNEL"


def lrn_workspace_shapes(shape: tuple[int, ...], dtype=numpy.float32) -> WorkspaceSpec:
    """``tmp`` (N, C, H, W) for both regions, forward and backward."""
    return {"tmp": (tuple(shape), numpy.dtype(dtype))}


def _window_sum(src: Array, dst: Array, axis: int, half: int) -> None:
    """dst[i] = Σ_{|d| <= half} src[i + d] along ``axis``, zero beyond the ends (the
    zero-padded window of Caffe's LRN). One shifted add per offset; dst must not alias src."""
    xp = get_array_module(src)
    xp.copyto(dst, src)
    lead = (slice(None),) * axis
    for d in range(1, half + 1):
        upper, lower = lead + (slice(d, None),), lead + (slice(None, -d),)
        xp.add(dst[upper], src[lower], out=dst[upper])  # window reaches back d
        xp.add(dst[lower], src[upper], out=dst[lower])  # window reaches forward d


def _negative_power(base: Array, beta: float, out: Array) -> None:
    """out = base ** -beta. The model zoo's beta 0.75 is base^(1/4) / base, two square roots
    and a division, ~1.5x faster than ``power`` (measured); 0.5 and 1 are similar."""
    xp = get_array_module(base)
    if beta == 0.75:
        xp.sqrt(base, out=out)
        xp.sqrt(out, out=out)
        xp.divide(out, base, out=out)
    elif beta == 0.5:
        xp.sqrt(base, out=out)
        xp.reciprocal(out, out=out)
    elif beta == 1.0:
        xp.reciprocal(base, out=out)
    else:
        xp.power(base, -beta, out=out)


def lrn_forward(x: Array, y: Array, scale: Array, inv_pow: Array, *, size: int, alpha: float,
                beta: float, k: float, region: str, ws: dict | None = None) -> None:
    """Local response normalisation, y = x * scale ** -beta.

    ACROSS_CHANNELS: scale = k + alpha / size * Σ x² over the ``size`` channels centred on
    each one (zero padded). WITHIN_CHANNEL (Caffe builds it from Power, AVE pooling with
    pad (size-1)/2 and Power layers): scale = 1 + alpha / size² * Σ x² over the size×size
    spatial window, the divisor counting the padding; ``k`` is ignored.

    Args:
        x, y: (N, C, H, W), distinct. scale, inv_pow: (N, C, H, W) outputs kept for
            backward (scale and scale ** -beta). size: odd window size.
    """
    xp = get_array_module(x)
    if is_cupy(xp) and region == ACROSS_CHANNELS:  # netforge/ops/cuda/normalization.py
        from netforge.ops.cuda import normalization as cuda_norm
        return cuda_norm.lrn_across_forward(x, y, scale, inv_pow, size=size, alpha=alpha,
                                            beta=beta, k=k)
    half = (size - 1) // 2
    squares = scratch(ws, "tmp", x.shape, x.dtype, xp)
    if region == ACROSS_CHANNELS and compiled.active(x, y, scale, inv_pow):
        compiled.load("normalization").lrn_forward(x, y, scale, inv_pow, size, alpha, beta, k)
        return
    xp.multiply(x, x, out=squares)
    if region == ACROSS_CHANNELS:
        _window_sum(squares, scale, 1, half)
        xp.multiply(scale, alpha / size, out=scale)
        xp.add(scale, k, out=scale)
    else:
        _window_sum(squares, inv_pow, 2, half)  # inv_pow serves as scratch here
        _window_sum(inv_pow, scale, 3, half)
        xp.multiply(scale, alpha / (size * size), out=scale)
        xp.add(scale, 1.0, out=scale)
    _negative_power(scale, beta, inv_pow)
    xp.multiply(x, inv_pow, out=y)


def lrn_backward(dy: Array, x: Array, scale: Array, inv_pow: Array, dx: Array, *, size: int,
                 alpha: float, beta: float, region: str, ws: dict | None = None) -> None:
    """dx = dy * scale^-beta - (2 alpha beta / n) * x * Σ_window (dy * y / scale), with
    n = size (across channels) or size² (within channel); the window is symmetric, so the
    sum runs over the same window as forward's. dx must not alias dy.

    y is rebuilt as x * scale^-beta rather than read from the top, which a later in-place
    layer may have overwritten (Caffe reads the top).
    """
    xp = get_array_module(dy)
    if is_cupy(xp) and region == ACROSS_CHANNELS:
        from netforge.ops.cuda import normalization as cuda_norm
        return cuda_norm.lrn_across_backward(dy, x, scale, inv_pow, dx, size=size,
                                             alpha=alpha, beta=beta)
    half = (size - 1) // 2
    ratio = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    if region == ACROSS_CHANNELS and compiled.active(dy, x, scale, inv_pow, dx, ratio):
        compiled.load("normalization").lrn_backward(dy, x, scale, inv_pow, dx, ratio, size,
                                                    alpha, beta)
        return
    xp.multiply(dy, x, out=ratio)
    xp.multiply(ratio, inv_pow, out=ratio)
    xp.divide(ratio, scale, out=ratio)
    if region == ACROSS_CHANNELS:
        _window_sum(ratio, dx, 1, half)
        xp.multiply(dx, x, out=dx)
        xp.multiply(dx, -2.0 * alpha * beta / size, out=dx)
        xp.multiply(dy, inv_pow, out=ratio)
        xp.add(dx, ratio, out=dx)
    else:
        _window_sum(ratio, dx, 2, half)
        _window_sum(dx, ratio, 3, half)
        xp.multiply(ratio, x, out=ratio)
        xp.multiply(ratio, -2.0 * alpha * beta / (size * size), out=ratio)
        xp.multiply(dy, inv_pow, out=dx)
        xp.add(dx, ratio, out=dx)

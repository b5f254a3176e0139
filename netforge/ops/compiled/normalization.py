"""BatchNorm (batch statistics and stored ones) and LRN across channels, each a few passes
of plain loops instead of a dozen array-wide ufunc calls.

BatchNorm takes the (N, C, S) views ``netforge.ops.normalization`` uses; the per-channel
sums accumulate in float64 (the reference's einsum sums in the data's type: the tests
compare within float32 tolerance). LRN takes (N, C, H, W) and sums the ``size`` channels
around each one directly (no running sum, whose subtractions would drift in float32).

Serial loops: they run between GEMMs, where a second thread pool would compete with
OpenBLAS's (see ``netforge.ops.compiled.elementwise``).
"""

from __future__ import annotations

import math

from netforge.ops.compiled.jit import kernel


@kernel
def _bn_forward_train(x, y, x_norm, keep, mean, var, inv_std, eps):
    n, c, s = x.shape
    count = n * s
    for ch in range(c):
        total = 0.0
        for b in range(n):
            for i in range(s):
                total += x[b, ch, i]
        mu = total / count
        squares = 0.0
        for b in range(n):
            for i in range(s):
                d = x[b, ch, i] - mu
                squares += d * d
        sigma2 = squares / count
        inv = 1.0 / math.sqrt(sigma2 + eps)
        mean[ch] = mu
        var[ch] = sigma2
        inv_std[ch] = inv
        for b in range(n):
            for i in range(s):
                v = (x[b, ch, i] - mu) * inv
                y[b, ch, i] = v
                if keep:
                    x_norm[b, ch, i] = v


@kernel
def _bn_forward_global(x, y, mean, inv_std):
    n, c, s = x.shape
    for b in range(n):
        for ch in range(c):
            mu = mean[ch]
            inv = inv_std[ch]
            for i in range(s):
                y[b, ch, i] = (x[b, ch, i] - mu) * inv


@kernel
def _bn_backward_train(dy, x_norm, inv_std, dx):
    n, c, s = dy.shape
    factor = -1.0 / (n * s)
    for ch in range(c):
        sum_dy = 0.0
        sum_dy_xn = 0.0
        for b in range(n):
            for i in range(s):
                g = dy[b, ch, i]
                sum_dy += g
                sum_dy_xn += g * x_norm[b, ch, i]
        inv = inv_std[ch]
        shift = sum_dy * inv * factor
        slope = sum_dy_xn * inv * factor
        for b in range(n):
            for i in range(s):
                dx[b, ch, i] = dy[b, ch, i] * inv + (x_norm[b, ch, i] * slope + shift)


def batch_norm_forward_train(x, y, x_norm, mean, var, inv_std, eps: float) -> None:
    keep = x_norm is not None
    _bn_forward_train(x, y, x_norm if keep else y, keep, mean, var, inv_std, float(eps))


def batch_norm_forward_global(x, y, mean, inv_std) -> None:
    _bn_forward_global(x, y, mean, inv_std)


def batch_norm_backward_train(dy, x_norm, inv_std, dx) -> None:
    _bn_backward_train(dy, x_norm, inv_std, dx)


@kernel
def _negative_power(base, beta):
    """base ** -beta, with the model zoo's 0.75 as two square roots and a division."""
    if beta == 0.75:
        return math.sqrt(math.sqrt(base)) / base
    if beta == 0.5:
        return 1.0 / math.sqrt(base)
    if beta == 1.0:
        return 1.0 / base
    return base ** -beta


@kernel
def _lrn_forward(x, y, scale, inv_pow, size, alpha, beta, k):
    n, c, h, w = x.shape
    half = (size - 1) // 2
    a = alpha / size
    for b in range(n):
        for ch in range(c):
            lo = max(0, ch - half)
            hi = min(c, ch + half + 1)
            for p in range(h):
                for q in range(w):
                    total = 0.0
                    for d in range(lo, hi):
                        v = x[b, d, p, q]
                        total += v * v
                    sc = k + a * total
                    ip = _negative_power(sc, beta)
                    scale[b, ch, p, q] = sc
                    inv_pow[b, ch, p, q] = ip
                    y[b, ch, p, q] = x[b, ch, p, q] * ip


@kernel
def _lrn_backward(dy, x, scale, inv_pow, dx, ratio, size, alpha, beta):
    n, c, h, w = dy.shape
    half = (size - 1) // 2
    factor = -2.0 * alpha * beta / size
    for b in range(n):
        for ch in range(c):
            for p in range(h):
                for q in range(w):
                    ratio[b, ch, p, q] = (dy[b, ch, p, q] * x[b, ch, p, q]
                                          * inv_pow[b, ch, p, q] / scale[b, ch, p, q])
        for ch in range(c):
            lo = max(0, ch - half)
            hi = min(c, ch + half + 1)
            for p in range(h):
                for q in range(w):
                    total = 0.0
                    for d in range(lo, hi):
                        total += ratio[b, d, p, q]
                    dx[b, ch, p, q] = (dy[b, ch, p, q] * inv_pow[b, ch, p, q]
                                       + factor * x[b, ch, p, q] * total)


def lrn_forward(x, y, scale, inv_pow, size: int, alpha: float, beta: float, k: float) -> None:
    """ACROSS_CHANNELS LRN (see ``netforge.ops.normalization.lrn_forward``)."""
    _lrn_forward(x, y, scale, inv_pow, int(size), float(alpha), float(beta), float(k))


def lrn_backward(dy, x, scale, inv_pow, dx, ratio, size: int, alpha: float,
                 beta: float) -> None:
    """ACROSS_CHANNELS LRN backward; ``ratio`` is (N, C, H, W) scratch."""
    _lrn_backward(dy, x, scale, inv_pow, dx, ratio, int(size), float(alpha), float(beta))

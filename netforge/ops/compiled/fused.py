"""The per-channel epilogue of ``netforge.ops.fused`` in one pass: bias, stored-statistics
BatchNorm, Scale, Scale's bias and ReLU, each stage one float operation as the layer it
stands for computes it (so the result equals the unfused layers' bit for bit).

``src`` may be strided (a GEMM product seen through a transpose); absent stages come as
empty vectors and a False flag.
"""

from __future__ import annotations

import numpy

from netforge.ops.compiled.jit import kernel


@kernel
def _epilogue(src, y, bias, mean, inv_std, scale, shift, has_bias, has_norm, has_scale,
              has_shift, relu, leaky, slope):
    n, c, s = y.shape
    zero = y.dtype.type(0)
    for b in range(n):
        for ch in range(c):
            add = bias[ch] if has_bias else zero
            mu = mean[ch] if has_norm else zero
            inv = inv_std[ch] if has_norm else zero
            mul = scale[ch] if has_scale else zero
            sh = shift[ch] if has_shift else zero
            for i in range(s):
                v = src[b, ch, i]
                if has_bias:
                    v = v + add
                if has_norm:
                    v = (v - mu) * inv
                if has_scale:
                    v = v * mul
                if has_shift:
                    v = v + sh
                if relu and v <= 0:  # NaN stays NaN, as with the ReLU kernel
                    v = v * slope if leaky else zero
                y[b, ch, i] = v


_EMPTY: dict = {}  # dtype -> the empty vector that stands for an absent stage


def channel_epilogue(src, y, bias, mean, inv_std, scale, shift, slope) -> None:
    empty = _EMPTY.get(y.dtype)
    if empty is None:
        empty = _EMPTY[y.dtype] = numpy.empty(0, dtype=y.dtype)

    def vector(v):
        return empty if v is None else v

    relu = slope is not None
    _epilogue(src, y, vector(bias), vector(mean), vector(inv_std), vector(scale),
              vector(shift), bias is not None, mean is not None, scale is not None,
              shift is not None, relu, relu and slope != 0,
              y.dtype.type(slope if relu else 0))

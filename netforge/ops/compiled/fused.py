"""The per-channel epilogue of ``netforge.ops.fused`` in one pass over memory: bias,
stored-statistics BatchNorm, Scale, Scale's bias and ReLU, each stage one float operation as
the layer it stands for computes it (so the result equals the unfused layers' bit for bit).

``src`` may be strided (a GEMM product seen through a transpose); absent stages come as
empty vectors and a False flag.
"""

from __future__ import annotations

import numpy

from netforge.ops.compiled.jit import kernel


@kernel
def _epilogue(src, y, bias, mean, inv_std, scale, shift, has_bias, has_norm, has_scale,
              has_shift, relu, leaky, slope):
    # One channel row at a time, one sweep per stage: the row (at most a few tens of KiB)
    # stays in L1 between sweeps, and each sweep is a branch-free loop LLVM vectorises (a
    # single loop testing every stage's flag per element ran scalar: slower than the
    # unfused layers on ResNet-50's 1x1 convolutions).
    n, c, s = y.shape
    for b in range(n):
        for ch in range(c):
            row_in = src[b, ch]
            row = y[b, ch]
            if has_bias:
                add = bias[ch]
                for i in range(s):
                    row[i] = row_in[i] + add
            else:
                for i in range(s):
                    row[i] = row_in[i]
            if has_norm:
                mu = mean[ch]
                inv = inv_std[ch]
                for i in range(s):
                    row[i] = (row[i] - mu) * inv
            if has_scale:
                mul = scale[ch]
                for i in range(s):
                    row[i] = row[i] * mul
            if has_shift:
                sh = shift[ch]
                for i in range(s):
                    row[i] = row[i] + sh
            if relu:  # v <= 0: NaN stays NaN, as with the ReLU kernel
                if leaky:
                    for i in range(s):
                        v = row[i]
                        row[i] = v * slope if v <= 0 else v
                else:
                    zero = y.dtype.type(0)
                    for i in range(s):
                        v = row[i]
                        row[i] = zero if v <= 0 else v


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

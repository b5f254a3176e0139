"""Winograd F(2x2, 3x3) tile transforms (Lavin & Gray 2015), one pass each:

    filter_transform(w, u)          U[xi, o, c] = (G g[o, c] G^T)[xi]          g 3x3
    input_transform(x, v, pad_h, pad_w, tiles_h, tiles_w)
                                    V[xi, c, t] = (B^T d[c, t] B)[xi]          d a 4x4 tile
    output_transform(m, y, bias, has_bias, tiles_h, tiles_w)
                                    y[n, o, 2i:2i+2, 2j:2j+2] = A^T M[:, o, t] A (+ bias[o])

with xi = 4 * row + column of the 4x4 transformed tile, t = (n * tiles_h + i) * tiles_w + j
the tile of output rows 2i, 2i+1 and columns 2j, 2j+1, and

    B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]    G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
    A^T = [1 1 1 0; 0 1 -1 -1].

Input pixels outside the image (the padding, and the last tile's overhang) count as zero;
outputs past the image's last row or column are not written. The channel contraction
between the transforms is 16 GEMMs, ``M[xi] = U[xi] @ V[xi]`` (``netforge.ops.winograd``).
The 4x4 tiles live in small local arrays, allocated once per call; their fixed-size loops
unroll. Serial loops: ``netforge.ops.batch_split`` runs one batch slice per core.
"""

from __future__ import annotations

import numpy

from netforge.ops.compiled.jit import kernel


@kernel
def filter_transform(w, u):
    o_count, c_count = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    t = numpy.empty((4, 3), dtype=w.dtype)  # G g
    for o in range(o_count):
        for c in range(c_count):
            for q in range(3):
                g0, g1, g2 = w[o, c, 0, q], w[o, c, 1, q], w[o, c, 2, q]
                t[0, q] = g0
                t[1, q] = half * (g0 + g1 + g2)
                t[2, q] = half * (g0 - g1 + g2)
                t[3, q] = g2
            for r in range(4):  # (G g) G^T
                a, b, e = t[r, 0], t[r, 1], t[r, 2]
                u[4 * r + 0, o, c] = a
                u[4 * r + 1, o, c] = half * (a + b + e)
                u[4 * r + 2, o, c] = half * (a - b + e)
                u[4 * r + 3, o, c] = e


@kernel
def input_transform(x, v, pad_h, pad_w, tiles_h, tiles_w):
    n_count, c_count, h, w = x.shape
    zero = x.dtype.type(0)
    d = numpy.empty((4, 4), dtype=x.dtype)
    for n in range(n_count):
        for c in range(c_count):
            for i in range(tiles_h):
                top = 2 * i - pad_h
                for j in range(tiles_w):
                    left = 2 * j - pad_w
                    t = (n * tiles_h + i) * tiles_w + j
                    if top >= 0 and left >= 0 and top + 4 <= h and left + 4 <= w:
                        for r in range(4):
                            for q in range(4):
                                d[r, q] = x[n, c, top + r, left + q]
                    else:  # a tile over the padding or past the last row / column
                        for r in range(4):
                            for q in range(4):
                                row, col = top + r, left + q
                                inside = 0 <= row < h and 0 <= col < w
                                d[r, q] = x[n, c, row, col] if inside else zero
                    for q in range(4):  # B^T d
                        a0, a1, a2, a3 = d[0, q], d[1, q], d[2, q], d[3, q]
                        d[0, q] = a0 - a2
                        d[1, q] = a1 + a2
                        d[2, q] = a2 - a1
                        d[3, q] = a1 - a3
                    for r in range(4):  # (B^T d) B
                        a0, a1, a2, a3 = d[r, 0], d[r, 1], d[r, 2], d[r, 3]
                        v[4 * r + 0, c, t] = a0 - a2
                        v[4 * r + 1, c, t] = a1 + a2
                        v[4 * r + 2, c, t] = a2 - a1
                        v[4 * r + 3, c, t] = a1 - a3


@kernel
def output_transform(m, y, bias, has_bias, tiles_h, tiles_w):
    n_count, o_count, out_h, out_w = y.shape
    zero = y.dtype.type(0)
    s = numpy.empty((2, 4), dtype=y.dtype)  # A^T M
    for n in range(n_count):
        for o in range(o_count):
            b = bias[o] if has_bias else zero
            for i in range(tiles_h):
                for j in range(tiles_w):
                    t = (n * tiles_h + i) * tiles_w + j
                    for q in range(4):
                        a0, a1 = m[q, o, t], m[4 + q, o, t]
                        a2, a3 = m[8 + q, o, t], m[12 + q, o, t]
                        s[0, q] = a0 + a1 + a2
                        s[1, q] = a1 - a2 - a3
                    for r in range(2):  # (A^T M) A, plus the bias
                        row = 2 * i + r
                        if row < out_h:
                            col = 2 * j
                            y[n, o, row, col] = s[r, 0] + s[r, 1] + s[r, 2] + b
                            if col + 1 < out_w:
                                y[n, o, row, col + 1] = s[r, 1] - s[r, 2] - s[r, 3] + b

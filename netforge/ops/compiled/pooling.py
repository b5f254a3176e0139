"""MAX and AVE pooling, forward and backward, with Caffe's window rules, plane by plane
(the pooling layer runs each slice of the batch on its own core through
``netforge.ops.batch_split``).

Window (oh, ow) covers rows [oh*sh - ph, oh*sh - ph + kh) clipped to the image. MAX scans it
in row-major order with a strict ``>`` from -FLT_MAX (so NaN never wins and the first of
equal maxima does; an empty window gives -FLT_MAX and index -1) and records the flat index
h*W + w. AVE divides the sum of real pixels by the window clipped to the padded extent
[-p, size + p); a window with no area gives 0. Backward assigns dx: each plane is zeroed
and the gradients added where forward read (overlapping windows sum).
"""

from __future__ import annotations

import numpy

from netforge.ops.compiled.jit import kernel

_NEG_FLT_MAX = -float(numpy.finfo(numpy.float32).max)
_NO_INDEX = numpy.empty((1, 1, 1, 1), numpy.int32)  # stands in for argmax when not wanted


@kernel
def _first_last(offset, stride, out_size, in_size):
    """Outputs [first, last) whose input index o*stride + offset lies in [0, in_size)."""
    first = max(0, -(offset // stride))
    last = min(out_size, (in_size - 1 - offset) // stride + 1)
    return first, max(first, last)


# The loops run window offset (i, j) outside and output column inside: for every output the
# offsets still come in row-major window order (so the strict ``>`` keeps Caffe's first
# maximum), and the inner loop is a plain strided pass that LLVM keeps branch-free (a scan
# window by window ran 5x slower on LeNet's 2x2 windows: short loops, mispredicted
# compares).


# MAX forward scans each window with selects rather than branches (a branch on random data
# mispredicts half the time); LeNet's and VGG's 2x2/2 windows get an unrolled kernel
# (measured on pool1, one thread: 0.12 ms against 1.4 ms for the general loop).


@kernel
def _max_forward(x, y, argmax, want_argmax, kh, kw, sh, sw, ph, pw):
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    start = x.dtype.type(_NEG_FLT_MAX)
    for task in range(n * c):
        b = task // c
        ch = task - b * c
        src = x[b, ch]
        for yo in range(oh):
            h0 = max(yo * sh - ph, 0)
            h1 = min(yo * sh - ph + kh, h)
            for xo in range(ow):
                w0 = max(xo * sw - pw, 0)
                w1 = min(xo * sw - pw + kw, w)
                best = start
                index = -1
                for hy in range(h0, h1):
                    for wx in range(w0, w1):
                        v = src[hy, wx]
                        better = v > best
                        best = v if better else best
                        index = hy * w + wx if better else index
                y[b, ch, yo, xo] = best
                if want_argmax:
                    argmax[b, ch, yo, xo] = index


@kernel
def _max_forward_2x2(x, y, argmax, want_argmax):
    """kernel 2, stride 2, no pad, every window inside the image."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    start = x.dtype.type(_NEG_FLT_MAX)
    for task in range(n * c):
        b = task // c
        ch = task - b * c
        src = x[b, ch]
        for yo in range(oh):
            top = src[2 * yo]
            bottom = src[2 * yo + 1]
            out = y[b, ch, yo]
            base = 2 * yo * w
            for xo in range(ow):
                best = start
                index = -1
                for k in range(4):  # Caffe's row-major window order
                    v = top[2 * xo + k] if k < 2 else bottom[2 * xo + k - 2]
                    better = v > best
                    best = v if better else best
                    index = base + (k // 2) * w + 2 * xo + k % 2 if better else index
                out[xo] = best
                if want_argmax:
                    argmax[b, ch, yo, xo] = index


# Without the argmax (predict), the maximum is separable: each output row first takes the
# column-wise maximum of its window's rows (a contiguous pass that LLVM vectorises), then
# the maximum of each window's columns in that row. The strict ``>`` from -FLT_MAX in both
# passes keeps NaN out as the scan above does, so the values are identical (a max is exact);
# measured 3-5x faster than the scan on SqueezeNet's 3x3/2 windows.


@kernel
def _max_forward_values(x, y, kh, kw, sh, sw, ph, pw):
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    start = x.dtype.type(_NEG_FLT_MAX)
    column_max = numpy.empty(w, x.dtype)
    for task in range(n * c):
        b = task // c
        ch = task - b * c
        src = x[b, ch]
        for yo in range(oh):
            h0 = max(yo * sh - ph, 0)
            h1 = min(yo * sh - ph + kh, h)
            column_max[:] = start
            for hy in range(h0, h1):
                row = src[hy]
                for wx in range(w):
                    v = row[wx]
                    column_max[wx] = v if v > column_max[wx] else column_max[wx]
            out = y[b, ch, yo]
            for xo in range(ow):
                w0 = max(xo * sw - pw, 0)
                w1 = min(xo * sw - pw + kw, w)
                best = start
                for wx in range(w0, w1):
                    v = column_max[wx]
                    best = v if v > best else best
                out[xo] = best


@kernel
def _max_backward(dy, argmax, dx):
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for task in range(n * c):
        b = task // c
        ch = task - b * c
        plane = dx[b, ch].reshape(h * w)
        plane[:] = 0
        for yo in range(oh):
            for xo in range(ow):
                index = argmax[b, ch, yo, xo]
                if index >= 0:
                    plane[index] += dy[b, ch, yo, xo]


@kernel
def _inverse_area(yo, xo, kh, kw, sh, sw, ph, pw, h, w, one):
    """1 / the window clipped to the padded extent (Caffe's divisor); 0 for no area."""
    h0 = yo * sh - ph
    w0 = xo * sw - pw
    area = (min(h0 + kh, h + ph) - h0) * (min(w0 + kw, w + pw) - w0)
    return one / area if area > 0 else one * 0  # in the data's float type, as the reference


@kernel
def _ave_forward(x, y, kh, kw, sh, sw, ph, pw):
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    one = x.dtype.type(1)
    for task in range(n * c):
        b = task // c
        ch = task - b * c
        src = x[b, ch]
        for yo in range(oh):
            total = y[b, ch, yo]
            total[:] = 0
            for i in range(kh):
                hy = yo * sh - ph + i
                if hy < 0 or hy >= h:
                    continue
                row = src[hy]
                for j in range(kw):
                    first, last = _first_last(j - pw, sw, ow, w)
                    for xo in range(first, last):
                        total[xo] += row[xo * sw - pw + j]
            for xo in range(ow):
                total[xo] *= _inverse_area(yo, xo, kh, kw, sh, sw, ph, pw, h, w, one)


@kernel
def _ave_backward(dy, dx, kh, kw, sh, sw, ph, pw):
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    one = dy.dtype.type(1)
    for task in range(n * c):
        b = task // c
        ch = task - b * c
        plane = dx[b, ch]
        plane[:, :] = 0
        for yo in range(oh):
            grad = dy[b, ch, yo]
            for i in range(kh):
                hy = yo * sh - ph + i
                if hy < 0 or hy >= h:
                    continue
                row = plane[hy]
                for j in range(kw):
                    first, last = _first_last(j - pw, sw, ow, w)
                    for xo in range(first, last):
                        row[xo * sw - pw + j] += grad[xo] * _inverse_area(
                            yo, xo, kh, kw, sh, sw, ph, pw, h, w, one)


def max_pool_forward(x, y, argmax, kernel, stride, pad) -> None:
    """y (and argmax, unless None) from x; sizes as (h, w) pairs."""
    want = argmax is not None
    index = argmax if want else _NO_INDEX
    if (kernel == (2, 2) and stride == (2, 2) and pad == (0, 0)
            and 2 * y.shape[2] <= x.shape[2] and 2 * y.shape[3] <= x.shape[3]):
        _max_forward_2x2(x, y, index, want)
        return
    if not want:
        _max_forward_values(x, y, *kernel, *stride, *pad)
        return
    _max_forward(x, y, index, want, *kernel, *stride, *pad)


def max_pool_backward(dy, argmax, dx) -> None:
    _max_backward(dy, argmax, dx)


def ave_pool_forward(x, y, kernel, stride, pad) -> None:
    _ave_forward(x, y, *kernel, *stride, *pad)


def ave_pool_backward(dy, dx, kernel, stride, pad) -> None:
    _ave_backward(dy, dx, *kernel, *stride, *pad)

"""MAX and AVE pooling on CuPy arrays: Caffe's pooling.cu rules as ElementwiseKernels.

The numpy kernels in ``netforge.ops.pooling`` split x into stride phases and loop over kernel
offsets with ``take(mode="clip")`` and other calls CuPy lacks or runs as many small launches;
on a GPU one thread per output (forward) or per input pixel (backward) is one launch and needs
no scratch. Backward gathers (each input pixel sums the outputs whose window holds it), so no
atomics and the result is deterministic — what a captured graph replayed many times needs.

``geo`` is a ``netforge.ops.pooling.PoolGeometry``. Same contract as the numpy kernels: y and
dx are assigned; argmax holds the flat index h*W + w of each window's first maximum, -1 when
the window lies in the padding only.
"""

from __future__ import annotations

from netforge.ops.cuda.compile import elementwise

_GEOMETRY = ("int32 h, int32 w, int32 oh, int32 ow, int32 kh, int32 kw, int32 sh, int32 sw, "
             "int32 ph, int32 pw")

_MAX_WINDOW = r"""
    typedef typename nf_acc<T>::type A;
    const int ox = i % ow, oy = (i / ow) % oh, nc = i / (ow * oh);
    int hs = oy * sh - ph, ws = ox * sw - pw;
    const int he = min(hs + kh, h), we = min(ws + kw, w);
    hs = max(hs, 0); ws = max(ws, 0);
    A best = (A)(-3.402823466e+38f);   // Caffe: -FLT_MAX whatever the dtype
    int best_index = -1;
    const long base = (long)nc * h * w;
    for (int a = hs; a < he; ++a) {
        for (int b = ws; b < we; ++b) {
            const A v = (A)x[base + a * w + b];
            if (v > best) { best = v; best_index = a * w + b; }   // first maximum wins
        }
    }
    y = (T)best;
"""


def _geometry_args(geo):
    return (geo.h, geo.w, geo.oh, geo.ow, geo.kh, geo.kw, geo.sh, geo.sw, geo.ph, geo.pw)


def max_pool_forward(x, y, argmax, geo) -> None:
    """y (N, C, OH, OW) = window maxima of x (N, C, H, W); argmax as above (may be None)."""
    if argmax is None:
        kernel = elementwise("nf_max_pool_fwd", f"raw T x, {_GEOMETRY}", "T y", _MAX_WINDOW)
        kernel(x, *_geometry_args(geo), y)
        return
    kernel = elementwise("nf_max_pool_fwd_argmax", f"raw T x, {_GEOMETRY}", "T y, I argmax",
                         _MAX_WINDOW + "    argmax = (I)best_index;\n")
    kernel(x, *_geometry_args(geo), y, argmax)


# Outputs whose window contains input row a: oy in [oy0, oy1) (Caffe's pooling.cu backward,
# with the padding added to the input coordinate).
_WINDOW_RANGE = r"""
    const int b = i % w, a = (i / w) % h, nc = i / (w * h);
    const int ap = a + ph, bp = b + pw;
    const int oy0 = (ap < kh) ? 0 : (ap - kh) / sh + 1, oy1 = min(ap / sh + 1, oh);
    const int ox0 = (bp < kw) ? 0 : (bp - kw) / sw + 1, ox1 = min(bp / sw + 1, ow);
    const long base = (long)nc * oh * ow;
    typedef typename nf_acc<T>::type A;
    A sum = 0;
"""


def max_pool_backward(dy, argmax, dx, geo) -> None:
    """dx (N, C, H, W), assigned: the sum of dy over the windows whose argmax is this pixel."""
    kernel = elementwise(
        "nf_max_pool_bwd", f"raw T dy, raw I argmax, {_GEOMETRY}", "T dx",
        _WINDOW_RANGE + r"""
    const I self = (I)(a * w + b);
    for (int oy = oy0; oy < oy1; ++oy)
        for (int ox = ox0; ox < ox1; ++ox)
            if (argmax[base + oy * ow + ox] == self) sum += (A)dy[base + oy * ow + ox];
    dx = (T)sum;
""")
    kernel(dy, argmax, *_geometry_args(geo), dx)


_AVE_AREA = r"""
            int hs = oy * sh - ph, ws = ox * sw - pw;
            const int he = min(hs + kh, h + ph), we = min(ws + kw, w + pw);
            const int area = (he - hs) * (we - ws);   // divisor clipped to the padded extent
"""


def ave_pool_forward(x, y, geo) -> None:
    """y = mean of x over each window, the divisor counting padding inside [-p, size + p)."""
    kernel = elementwise(
        "nf_ave_pool_fwd", f"raw T x, {_GEOMETRY}", "T y",
        r"""
    typedef typename nf_acc<T>::type A;
    const int ox = i % ow, oy = (i / ow) % oh, nc = i / (ow * oh);
    {""" + _AVE_AREA + r"""
            const int h0 = max(hs, 0), w0 = max(ws, 0), h1 = min(he, h), w1 = min(we, w);
            const long base = (long)nc * h * w;
            A sum = 0;
            for (int a = h0; a < h1; ++a)
                for (int b = w0; b < w1; ++b) sum += (A)x[base + a * w + b];
            y = (T)(sum / (A)area);
    }
""")
    kernel(x, *_geometry_args(geo), y)


def ave_pool_backward(dy, dx, geo) -> None:
    """dx (N, C, H, W), assigned: each output's dy / area spread over its window."""
    kernel = elementwise(
        "nf_ave_pool_bwd", f"raw T dy, {_GEOMETRY}", "T dx",
        _WINDOW_RANGE + r"""
    for (int oy = oy0; oy < oy1; ++oy) {
        for (int ox = ox0; ox < ox1; ++ox) {""" + _AVE_AREA + r"""
            sum += (A)dy[base + oy * ow + ox] / (A)area;
        }
    }
    dx = (T)sum;
""")
    kernel(dy, *_geometry_args(geo), dx)

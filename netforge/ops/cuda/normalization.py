"""LRN across channels on CuPy arrays (Caffe's lrn.cu as ElementwiseKernels).

The numpy form builds windowed sums with several whole-array passes; here each element reads
its ``size`` channel neighbours directly: O(size) reads per element, two launches forward and
one backward, no scratch. WITHIN_CHANNEL stays on the xp-generic path (Caffe itself composes
it from Power and AVE pooling).
"""

from __future__ import annotations

from netforge.ops.cuda.compile import elementwise

_SHAPE = "int32 c, int32 h, int32 w, int32 half"
_NEIGHBOURS = r"""
    typedef typename nf_acc<T>::type A;
    const int hw = h * w;
    const int pos = i % hw, ch = (i / hw) % c, n = i / (hw * c);
    const int c0 = max(ch - half, 0), c1 = min(ch + half + 1, c);
    const long base = (long)n * c * hw + pos;
    A sum = 0;
"""


def lrn_across_forward(x, y, scale, inv_pow, *, size: int, alpha: float, beta: float,
                       k: float) -> None:
    """scale = k + alpha/size * Σ x² over the ``size`` channels centred on each one (zero
    padded); inv_pow = scale ** -beta; y = x * inv_pow. All (N, C, H, W), distinct."""
    _, c, h, w = x.shape
    scale_kernel = elementwise(
        "nf_lrn_scale", f"raw T x, {_SHAPE}, float64 alpha_n, float64 k, float64 beta",
        "T scale, T inv_pow", _NEIGHBOURS + r"""
    for (int cc = c0; cc < c1; ++cc) { const A v = (A)x[base + (long)cc * hw]; sum += v * v; }
    const A s = (A)k + (A)alpha_n * sum;
    scale = (T)s;
    inv_pow = (T)pow(s, (A)(-beta));
""")
    scale_kernel(x, c, h, w, (size - 1) // 2, alpha / size, k, beta, scale, inv_pow)
    elementwise("nf_multiply", "T a, T b", "T out", "out = a * b")(x, inv_pow, y)


def lrn_across_backward(dy, x, scale, inv_pow, dx, *, size: int, alpha: float,
                        beta: float) -> None:
    """dx = dy * inv_pow - (2 alpha beta / size) * x * Σ_window(dy * y / scale) with
    y = x * inv_pow; assigned, must not alias dy."""
    _, c, h, w = x.shape
    kernel = elementwise(
        "nf_lrn_bwd", f"raw T dy, raw T x, raw T scale, raw T inv_pow, {_SHAPE}, float64 coeff",
        "T dx", _NEIGHBOURS + r"""
    for (int cc = c0; cc < c1; ++cc) {
        const long j = base + (long)cc * hw;
        sum += (A)dy[j] * (A)x[j] * (A)inv_pow[j] / (A)scale[j];
    }
    const long self = base + (long)ch * hw;
    dx = (T)((A)dy[self] * (A)inv_pow[self] - (A)coeff * (A)x[self] * sum);
""")
    kernel(dy, x, scale, inv_pow, c, h, w, (size - 1) // 2, 2.0 * alpha * beta / size, dx)

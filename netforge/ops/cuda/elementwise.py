"""Elementwise chains as single CuPy kernels.

(numpy's ``add.at`` and ``take/put(mode=...)`` already have CuPy branches in the xp-generic
ops: ``cupyx.scatter_add`` and mode-free forms. MAX pooling's ``take(mode="clip")`` table
lookups are replaced wholesale by ``pooling.py``.)

- ``cast(src, dst)``: dtype conversion into an existing buffer (fp32 masters ↔ bf16/fp16
  working copies), one launch, no temporary.
- ``bias_relu(x, bias, y, negative_slope)``: Convolution's bias add and a following ReLU in
  one pass when cuDNN's fused epilogue is not available.
- ``relu_backward(dy, y, dx, negative_slope)``: from the top data, so it works in place.
"""

from __future__ import annotations

from netforge.ops.cuda.compile import elementwise


def cast(src, dst) -> None:
    """dst[...] = src converted to dst's dtype (same shape), through float."""
    elementwise("nf_cast", "S src", "D dst", "dst = (D)(float)src")(src, dst)


def bias_relu(x, bias, y, negative_slope: float = 0.0) -> None:
    """y = max(x + bias, 0) + negative_slope * min(x + bias, 0); x, y (N, C, S), bias (C,)."""
    n, c, s = x.shape
    kernel = elementwise(
        "nf_bias_relu", "T x, raw T bias, int32 c, int64 s, float64 slope", "T y",
        r"""typedef typename nf_acc<T>::type A;
            const A v = (A)x + (A)bias[(i / s) % c];
            y = (T)(v > 0 ? v : v * (A)slope);""")
    kernel(x, bias, c, s, negative_slope, y)


def relu_backward(dy, y, dx, negative_slope: float = 0.0) -> None:
    """dx = dy where y > 0, else negative_slope * dy (Caffe's rule, read from the top data)."""
    kernel = elementwise("nf_relu_bwd", "T dy, T y, float64 slope", "T dx",
                         "typedef typename nf_acc<T>::type A;"
                         " dx = (A)y > 0 ? dy : (T)((A)dy * (A)slope);")
    kernel(dy, y, negative_slope, dx)


def fill_scalar(dst, value_dev) -> None:
    """dst[...] = value_dev[0] (a device scalar, so a captured graph sees new values)."""
    elementwise("nf_fill_from_device", "raw S value", "T dst", "dst = (T)value[0]")(
        value_dev, dst)


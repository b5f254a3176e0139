"""Softmax + multinomial logistic loss on CuPy arrays, the loss left on the device.

The numpy form returns the loss as a Python float — a host read, which a captured CUDA graph
cannot contain. Here forward writes the loss and its normalizer into 0-d device arrays, and
backward reads the top's diff (loss_weight, times the loss scale under mixed precision) from
device memory too, so nothing in the step waits for the host.

Shapes: x, prob, dx (outer, C, inner) around ``axis`` (given here already split);
label: outer * inner integer-valued labels (any dtype). Sums and exponentials run in fp32
(fp64 for fp64 inputs) whatever the storage type: softmax stays full precision under mixed
precision.
"""

from __future__ import annotations

import cupy

from netforge.ops.cuda.compile import elementwise

_FLT_MIN = 1.17549435e-38

# One thread per (outer, inner) position: max, sum of exponentials, prob, and the position's
# negative log-likelihood (0 and not counted when its label is ignored).
_POSITION = r"""
    typedef typename nf_acc<T>::type A;
    const long o = i / inner, p = i % inner;
    const long base = o * c * inner + p;
    A top = (A)x[base];
    for (int k = 1; k < c; ++k) top = max(top, (A)x[base + (long)k * inner]);
    A sum = 0;
    for (int k = 0; k < c; ++k) sum += exp((A)x[base + (long)k * inner] - top);
    for (int k = 0; k < c; ++k)
        prob[base + (long)k * inner] = (T)(exp((A)x[base + (long)k * inner] - top) / sum);
    const int lab = (int)label;
    if (has_ignore && lab == ignore_label) { nll = 0; valid = 0; }
    else {
        const A picked = exp((A)x[base + (long)lab * inner] - top) / sum;
        nll = -log(max(picked, (A)1.17549435e-38));
        valid = 1;
    }
"""


def softmax_loss_forward(x, label, prob, loss, normalizer, nll, valid, *, ignore_label,
                         normalization: str) -> None:
    """prob = softmax(x) along C; loss (0-d fp32) = Σ nll / normalizer (0-d fp32, kept for
    backward). nll, valid: (outer, inner) fp32 scratch owned by the caller's workspace."""
    outer, c, inner = x.shape
    has_ignore = ignore_label is not None
    kernel = elementwise(
        "nf_softmax_loss_position",
        "raw T x, L label, int32 c, int64 inner, bool has_ignore, int32 ignore_label",
        "raw T prob, float32 nll, float32 valid", _POSITION)
    kernel(x, label.reshape(outer, inner), c, inner, has_ignore,
           int(ignore_label) if has_ignore else 0, prob, nll, valid)
    if normalization == "VALID":
        # Caffe: VALID counts the non-ignored positions; never divide by less than 1
        cupy.sum(valid, out=normalizer)
        cupy.maximum(normalizer, 1.0, out=normalizer)
    else:
        fixed = {"FULL": outer * inner, "BATCH_SIZE": outer, "NONE": 1}[normalization]
        normalizer.fill(max(float(fixed), 1.0))
    cupy.sum(nll, out=loss)
    cupy.divide(loss, normalizer, out=loss)


def softmax_loss_backward(prob, label, dx, normalizer, top_diff, *, ignore_label) -> None:
    """dx = (prob - onehot(label)) * top_diff / normalizer, zero at ignored positions.

    top_diff and normalizer are 0-d device arrays; dx may not alias prob.
    """
    outer, c, inner = prob.shape
    has_ignore = ignore_label is not None
    kernel = elementwise(
        "nf_softmax_loss_bwd",
        "T prob, raw L label, raw float32 normalizer, raw W top_diff, int32 c, int64 inner, "
        "bool has_ignore, int32 ignore_label", "T dx",
        r"""
    typedef typename nf_acc<T>::type A;
    const long p = i % inner, k = (i / inner) % c, o = i / (inner * c);
    const int lab = (int)label[o * inner + p];
    if (has_ignore && lab == ignore_label) { dx = (T)0; }
    else {
        const A scale = (A)top_diff[0] / (A)normalizer[0];
        dx = (T)(((A)prob - (k == lab ? (A)1 : (A)0)) * scale);
    }
""")
    kernel(prob, label.reshape(outer, inner), normalizer, top_diff, c, inner, has_ignore,
           int(ignore_label) if has_ignore else 0, dx)

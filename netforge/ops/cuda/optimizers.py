"""Caffe's update rules as single fused CuPy kernels, the learning rate read from the device.

A captured CUDA graph bakes scalar kernel arguments in at capture time, but the learning
rate changes between iterations (step, poly, ... policies). So the rate lives in a 1-element
device array ``rate`` that the host fills (outside the graph, before each replay), and the
kernels read ``rate[0]``. Momentum, decay and epsilon are fixed for a run and stay arguments.

Each call updates one parameter: normalize (÷ iter_size) → L2/L1 regularize → the rule's
history update → ``data -= update``, in one launch (Caffe runs 3-5 kernels per parameter).
``skip`` (1-element int32, may be None) is the mixed-precision overflow flag: when it is set
the kernel leaves data and history untouched, so an overflowing step is dropped on the device.
"""

from __future__ import annotations

import cupy

from netforge.ops.cuda.compile import elementwise

_PROLOGUE = r"""
    typedef typename nf_acc<T>::type A;
    if (skip[0] != 0) continue;
    A g = (A)diff / (A)iter_size;
    const A wv = (A)data;
    if (l1) g += (A)decay * (wv > 0 ? (A)1 : (wv < 0 ? (A)-1 : (A)0));
    else g += (A)decay * wv;
    const A lr = (A)rate[0] * (A)lr_mult;
"""

_COMMON_IN = "raw float32 rate, raw int32 skip, float64 lr_mult, float64 decay, bool l1, " \
             "float64 iter_size"

_NO_SKIP: dict[int, object] = {}


def _skip_or_zero(skip):
    if skip is not None:
        return skip
    device = cupy.cuda.Device().id
    if device not in _NO_SKIP:
        _NO_SKIP[device] = cupy.zeros(1, dtype=cupy.int32)
    return _NO_SKIP[device]


def sgd(data, diff, history, rate, *, momentum: float, lr_mult=1.0, decay=0.0, l1=False,
        iter_size=1, skip=None, nesterov: bool = False) -> None:
    """Caffe SGD (history = momentum * history + lr * g; data -= history) or Nesterov
    (data -= (1 + momentum) * history_new - momentum * history_old). diff is left holding
    the applied update, as Caffe leaves it."""
    name = "nf_nesterov" if nesterov else "nf_sgd"
    step = ("const A h_old = (A)history; const A h_new = (A)momentum * h_old + lr * g;"
            " const A u = (1 + (A)momentum) * h_new - (A)momentum * h_old;" if nesterov else
            "const A h_new = (A)momentum * (A)history + lr * g; const A u = h_new;")
    kernel = elementwise(name, f"{_COMMON_IN}, float64 momentum", "T data, T diff, T history",
                         _PROLOGUE + step + " history = (T)h_new; diff = (T)u;"
                         " data = (T)(wv - u);")
    kernel(rate, _skip_or_zero(skip), lr_mult, decay, l1, iter_size, momentum, data, diff,
           history)


def adam(data, diff, m, v, rate, *, beta1: float, beta2: float, eps: float, correction,
         lr_mult=1.0, decay=0.0, l1=False, iter_size=1, skip=None) -> None:
    """Caffe Adam: m, v moving averages; step = lr * correction * m / (sqrt(v) + eps) with
    ``correction`` = sqrt(1 - beta2^t) / (1 - beta1^t) in a 1-element device array (it depends
    on the iteration, like the rate)."""
    kernel = elementwise(
        "nf_adam", f"{_COMMON_IN}, raw float32 correction, float64 beta1, float64 beta2, "
        "float64 eps", "T data, T diff, T m, T v",
        _PROLOGUE + r"""
    const A m_new = (A)beta1 * (A)m + (1 - (A)beta1) * g;
    const A v_new = (A)beta2 * (A)v + (1 - (A)beta2) * g * g;
    const A u = lr * (A)correction[0] * m_new / (sqrt(v_new) + (A)eps);
    m = (T)m_new; v = (T)v_new; diff = (T)u; data = (T)(wv - u);
""")
    kernel(rate, _skip_or_zero(skip), lr_mult, decay, l1, iter_size, correction, beta1, beta2,
           eps, data, diff, m, v)

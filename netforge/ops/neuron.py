"""Elementwise activation kernels, forward beside backward; all of them may run in place.

Any shape. In place is Caffe's idiom: top is bottom, so ``y is x`` in forward and, in
backward, ``dx is dy`` (the diffs are shared too) while the data argument is the shared blob.

    relu_workspace_shapes(shape, dtype, *, negative_slope) -> spec
    relu_forward(x, y, *, negative_slope=0.0, ws=None)          ws only when leaky
    relu_backward(dy, data, dx, *, negative_slope=0.0, ws=None) data: x, or y if slope >= 0
    sigmoid_forward(x, y)
    sigmoid_backward(dy, y, dx, *, ws=None)                     ws only when dx aliases
    tanh_forward(x, y)
    tanh_backward(dy, y, dx, *, ws=None)                        ws only when dx aliases
    tmp_workspace_shapes(shape, dtype) -> spec                  ``tmp`` for sigmoid/tanh
    dropout_forward(x, y, mask, ratio, rng)                     TRAIN; TEST is the identity
    dropout_backward(dy, mask, ratio, dx)
    prelu_workspace_shapes(shape3, dtype) -> spec               ``tmp``, ``rows``, ``vec``
    prelu_forward(x, slope, y, *, ws=None)                      x (N, C, S); slope (C,) or ()
    prelu_backward(dy, x, slope, dx, dslope, *, ws=None)        dslope accumulated
    elu_forward(x, y, *, alpha, ws=None)
    elu_backward(dy, data, y, dx, *, alpha, ws=None)            data: x, or y when in place
    swish_forward(x, y, sig, *, beta)                           sig keeps sigmoid(beta x)
    swish_backward(dy, y, sig, dx, *, beta, ws=None)
    absval_forward(x, y) / absval_backward(dy, x, dx, *, ws=None)
    bnll_forward(x, y, *, ws=None) / bnll_backward(dy, y, dx, *, ws=None)
    power_forward(x, y, *, power, scale, shift)
    power_backward(dy, x, dx, *, power, scale, shift, ws=None)
    exp_forward(x, y, *, base, scale, shift) / exp_backward(dy, y, dx, *, base, scale)
    log_forward(x, y, *, base, scale, shift)
    log_backward(dy, x, dx, *, base, scale, shift, ws=None)
    threshold_forward(x, y, *, threshold)                       no backward (as Caffe)
    clip_forward(x, y, *, lo, hi) / clip_backward(dy, x, dx, *, lo, hi, ws=None)

Where a backward needs the bottom data ``x`` and the layer runs in place, the layer passes a
copy of x taken before forward overwrote it (Caffe's PReLU keeps ``bottom_memory_``).

Outputs are assigned. ``ws`` follows ``netforge.ops.xp``: without it these kernels allocate
their scratch per call.
"""

from __future__ import annotations

from typing import Any

import numpy

from netforge.ops import compiled
from netforge.ops.normalization import channel_sums
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, scratch


def relu_workspace_shapes(shape: tuple[int, ...], dtype: numpy.dtype = numpy.float32, *,
                          negative_slope: float = 0.0) -> WorkspaceSpec:
    """ReLU's scratch: a bool ``mask`` (plain ReLU's backward), or for a leaky ReLU a ``tmp``
    of the data's dtype (forward and backward)."""
    if negative_slope == 0:
        return {"mask": (tuple(shape), numpy.dtype(bool))}
    return {"tmp": (tuple(shape), numpy.dtype(dtype))}


# The leaky forms use arithmetic on a temporary rather than numpy's masked ``where=`` ufuncs,
# which ran 10-30x slower on random sign patterns (measured).


def relu_forward(x: Array, y: Array, *, negative_slope: float = 0.0,
                 ws: dict | None = None) -> None:
    """y = max(x, 0) + negative_slope * min(x, 0)."""
    xp = get_array_module(x)
    if compiled.active(x, y):
        compiled.load("elementwise").relu_forward(x, y, negative_slope)
        return
    if negative_slope == 0:
        xp.maximum(x, 0, out=y)
        return
    tmp = scratch(ws, "tmp", x.shape, x.dtype, xp)
    xp.minimum(x, 0, out=tmp)  # before y (which may be x) is written
    xp.maximum(x, 0, out=y)
    xp.multiply(tmp, negative_slope, out=tmp)
    xp.add(y, tmp, out=y)


def relu_backward(dy: Array, data: Array, dx: Array, *, negative_slope: float = 0.0,
                  ws: dict | None = None) -> None:
    """dx = dy where data > 0, else negative_slope * dy (Caffe counts 0 as negative).

    ``data`` is the bottom data x, or the top data y, which is what an in-place ReLU has
    left: for negative_slope >= 0, y > 0 exactly where x > 0.
    """
    xp = get_array_module(dy)
    if compiled.active(dy, data, dx):
        compiled.load("elementwise").relu_backward(dy, data, dx, negative_slope)
        return
    if negative_slope == 0:
        mask = scratch(ws, "mask", dy.shape, bool, xp)
        xp.greater(data, 0, out=mask)
        xp.multiply(dy, mask, out=dx)
        return
    factor = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.greater(data, 0, out=factor)  # 1.0 / 0.0
    xp.multiply(factor, 1.0 - negative_slope, out=factor)
    xp.add(factor, negative_slope, out=factor)  # 1 or negative_slope
    xp.multiply(dy, factor, out=dx)


def sigmoid_forward(x: Array, y: Array) -> None:
    """y = 1 / (1 + exp(-x)), computed as 0.5 * tanh(0.5 * x) + 0.5, which cannot overflow."""
    xp = get_array_module(x)
    xp.multiply(x, 0.5, out=y)
    xp.tanh(y, out=y)
    xp.multiply(y, 0.5, out=y)
    xp.add(y, 0.5, out=y)


def _derivative_buffer(xp: Any, ws: dict | None, dy: Array, y: Array, dx: Array) -> Array:
    """Where to build the local derivative: dx itself, unless dx aliases dy or y (in place),
    in which case ws["tmp"]."""
    if xp.may_share_memory(dx, dy) or xp.may_share_memory(dx, y):
        return scratch(ws, "tmp", y.shape, y.dtype, xp)
    return dx


def sigmoid_backward(dy: Array, y: Array, dx: Array, *, ws: dict | None = None) -> None:
    """dx = dy * y * (1 - y), from the top data y."""
    xp = get_array_module(dy)
    tmp = _derivative_buffer(xp, ws, dy, y, dx)
    xp.subtract(1, y, out=tmp)
    xp.multiply(tmp, y, out=tmp)
    xp.multiply(tmp, dy, out=dx)


def tanh_forward(x: Array, y: Array) -> None:
    """y = tanh(x)."""
    get_array_module(x).tanh(x, out=y)


def tanh_backward(dy: Array, y: Array, dx: Array, *, ws: dict | None = None) -> None:
    """dx = dy * (1 - y^2), from the top data y."""
    xp = get_array_module(dy)
    tmp = _derivative_buffer(xp, ws, dy, y, dx)
    xp.multiply(y, y, out=tmp)
    xp.subtract(1, tmp, out=tmp)
    xp.multiply(tmp, dy, out=dx)


def tmp_workspace_shapes(shape: tuple[int, ...], dtype: numpy.dtype = numpy.float32
                         ) -> WorkspaceSpec:
    """``tmp`` (the data's shape and dtype) for an in-place sigmoid/tanh backward."""
    return {"tmp": (tuple(shape), numpy.dtype(dtype))}


def dropout_forward(x: Array, y: Array, mask: Array, ratio: float, rng: Any) -> None:
    """Inverted dropout (TRAIN): keep each unit with probability 1 - ratio and scale it by
    1 / (1 - ratio). In TEST the layer is the identity and does not call this.

    Args:
        x: input, any shape; y: output of the same shape, may be x.
        mask: x's shape. Preferably floating (x's dtype): it is assigned each unit's
            multiplier, 0 or 1 / (1 - ratio), which leaves backward a single product and
            needs no other scratch. A bool mask (assigned the kept units) also works but
            costs a per-call buffer for the random draws.
        ratio: drop probability, in [0, 1).
        rng: a ``netforge.ops.random.RandomStream`` (what layers pass: counter-based, the
            same bits on numpy and CuPy, no host draw) or a ``numpy.random.Generator``,
            owned by the caller, so that runs are reproducible and no global state is
            touched.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"dropout ratio must be in [0, 1), got {ratio}")
    xp = get_array_module(x)
    scale = 1.0 / (1.0 - ratio)
    if mask.dtype == bool:
        if hasattr(rng, "uniform_at_least"):  # a RandomStream: compared as integers
            rng.uniform_at_least(mask, ratio)
        else:
            draws = rng.random(size=mask.shape, dtype=numpy.float32)
            xp.greater_equal(draws, ratio, out=mask)
        xp.multiply(x, mask, out=y)
        xp.multiply(y, scale, out=y)
        return
    rng.random(dtype=mask.dtype, out=mask)
    # u >= ratio has probability 1 - ratio; the bool result lands in mask as 0.0 / 1.0.
    xp.greater_equal(mask, ratio, out=mask)
    xp.multiply(mask, scale, out=mask)
    xp.multiply(x, mask, out=y)


def dropout_backward(dy: Array, mask: Array, ratio: float, dx: Array) -> None:
    """dx = dy * mask's multipliers (dx may be dy); ``ratio`` matters only for a bool mask."""
    xp = get_array_module(dy)
    xp.multiply(dy, mask, out=dx)
    if mask.dtype == bool:
        xp.multiply(dx, 1.0 / (1.0 - ratio), out=dx)


# --------------------------------------------------------------------------- PReLU


def prelu_workspace_shapes(shape3: tuple[int, ...], dtype: numpy.dtype = numpy.float32
                           ) -> WorkspaceSpec:
    """PReLU's scratch for an (N, C, S) view: ``tmp`` (N, C, S) and the slope reduction's
    ``rows`` (N, C) and ``vec`` (C,)."""
    n, c, _ = shape3
    dt = numpy.dtype(dtype)
    return {"tmp": (tuple(shape3), dt), "rows": ((n, c), dt), "vec": ((c,), dt)}


def prelu_forward(x: Array, slope: Array, y: Array, *, ws: dict | None = None) -> None:
    """y = max(x, 0) + slope[c] * min(x, 0).

    Args:
        x, y: (N, C, S) views (y may be x); a channel-shared slope uses a (1, 1, count) view.
        slope: (C,), one slope per channel of the view.
    """
    xp = get_array_module(x)
    tmp = scratch(ws, "tmp", x.shape, x.dtype, xp)
    xp.minimum(x, 0, out=tmp)  # before y (which may be x) is written
    xp.multiply(tmp, slope[:, None], out=tmp)
    xp.maximum(x, 0, out=y)
    xp.add(y, tmp, out=y)


def prelu_backward(dy: Array, x: Array, slope: Array, dx: Array | None, dslope: Array | None,
                   *, ws: dict | None = None) -> None:
    """dx = dy * (1 if x > 0 else slope[c]); dslope[c] += Σ dy * min(x, 0) (Caffe counts
    x == 0 as negative). Either output may be None (not wanted); dx may be dy.

    Args:
        dy, x: (N, C, S), x being the bottom data (a copy of it when run in place).
        slope, dslope: (C,).
    """
    xp = get_array_module(dy)
    tmp = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    if dslope is not None:  # before dx, which may be dy, is written
        xp.minimum(x, 0, out=tmp)
        channel_sums(tmp, dslope, b=dy, accumulate=True, ws=ws)
    if dx is not None:
        xp.greater(x, 0, out=tmp)  # 1.0 / 0.0
        xp.multiply(tmp, 1.0 - slope[:, None], out=tmp)
        xp.add(tmp, slope[:, None], out=tmp)  # 1 or slope
        xp.multiply(dy, tmp, out=dx)


# --------------------------------------------------------------------------- ELU, Swish


def elu_forward(x: Array, y: Array, *, alpha: float, ws: dict | None = None) -> None:
    """y = x if x > 0 else alpha * (exp(x) - 1)."""
    xp = get_array_module(x)
    tmp = scratch(ws, "tmp", x.shape, x.dtype, xp)
    xp.minimum(x, 0, out=tmp)
    xp.expm1(tmp, out=tmp)
    xp.multiply(tmp, alpha, out=tmp)
    xp.maximum(x, 0, out=y)
    xp.add(y, tmp, out=y)


def elu_workspace_shapes(shape: tuple[int, ...], dtype: numpy.dtype = numpy.float32
                         ) -> WorkspaceSpec:
    """ELU's ``tmp`` (the data's dtype) and backward's bool ``mask``."""
    return {"tmp": (tuple(shape), numpy.dtype(dtype)), "mask": (tuple(shape), numpy.dtype(bool))}


def elu_backward(dy: Array, data: Array, y: Array, dx: Array, *, alpha: float,
                 ws: dict | None = None) -> None:
    """dx = dy if x > 0 else dy * (y + alpha)  (= dy * alpha * exp(x)).

    ``data`` is the bottom data x, or, run in place, the top data y, as in Caffe, which
    tests the sign of what the bottom blob holds; for alpha >= 0, y > 0 exactly where x > 0.
    """
    xp = get_array_module(dy)
    negative = scratch(ws, "mask", dy.shape, bool, xp)
    factor = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.less_equal(data, 0, out=negative)
    xp.add(y, alpha, out=factor)
    xp.multiply(factor, negative, out=factor)  # y + alpha where x <= 0, else 0 ...
    xp.subtract(factor, negative, out=factor)
    xp.add(factor, 1, out=factor)  # ... and 1 where x > 0
    xp.multiply(dy, factor, out=dx)


def swish_forward(x: Array, y: Array, sig: Array, *, beta: float) -> None:
    """y = x * sigmoid(beta * x); ``sig`` keeps sigmoid(beta * x) for backward."""
    xp = get_array_module(x)
    xp.multiply(x, beta, out=sig)
    sigmoid_forward(sig, sig)
    xp.multiply(x, sig, out=y)


def swish_backward(dy: Array, y: Array, sig: Array, dx: Array, *, beta: float,
                   ws: dict | None = None) -> None:
    """dx = dy * (beta * y + sig * (1 - beta * y)), from the top data and the kept sigmoid
    (Caffe's form), so it works in place."""
    xp = get_array_module(dy)
    factor = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.subtract(1, sig, out=factor)
    xp.multiply(factor, y, out=factor)
    xp.multiply(factor, beta, out=factor)
    xp.add(factor, sig, out=factor)  # beta*y*(1 - sig) + sig
    xp.multiply(dy, factor, out=dx)


# --------------------------------------------------------------------------- AbsVal, BNLL


def absval_forward(x: Array, y: Array) -> None:
    """y = |x|."""
    get_array_module(x).absolute(x, out=y)


def absval_backward(dy: Array, x: Array, dx: Array, *, ws: dict | None = None) -> None:
    """dx = dy * sign(x), sign(0) = 0 as Caffe's caffe_cpu_sign."""
    xp = get_array_module(dy)
    sign = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.sign(x, out=sign)
    xp.multiply(dy, sign, out=dx)


def bnll_forward(x: Array, y: Array, *, ws: dict | None = None) -> None:
    """y = log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)), Caffe's stable split
    (x + log(1 + exp(-x)) for x > 0), which cannot overflow."""
    xp = get_array_module(x)
    tmp = scratch(ws, "tmp", x.shape, x.dtype, xp)
    xp.absolute(x, out=tmp)
    xp.negative(tmp, out=tmp)
    xp.exp(tmp, out=tmp)
    xp.log1p(tmp, out=tmp)
    xp.maximum(x, 0, out=y)
    xp.add(y, tmp, out=y)


def bnll_backward(dy: Array, y: Array, dx: Array, *, ws: dict | None = None) -> None:
    """dx = dy * sigmoid(x), with sigmoid(x) = 1 - exp(-y) recovered from the top data
    y = log(1 + exp(x)) (so it works in place); -expm1(-y) keeps it exact for small y."""
    xp = get_array_module(dy)
    factor = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.negative(y, out=factor)
    xp.expm1(factor, out=factor)
    xp.negative(factor, out=factor)
    xp.multiply(dy, factor, out=dx)


# --------------------------------------------------------------------------- Power, Exp, Log


def _raise_to(a: Array, power: float) -> None:
    """a **= power in place, with the common exponents spelled as cheaper ufuncs."""
    xp = get_array_module(a)
    if power == 2:
        xp.multiply(a, a, out=a)
    elif power == 0.5:
        xp.sqrt(a, out=a)
    elif power == -1:
        xp.reciprocal(a, out=a)
    elif power != 1:
        xp.power(a, power, out=a)


def power_forward(x: Array, y: Array, *, power: float, scale: float, shift: float) -> None:
    """y = (shift + scale * x) ** power. When power * scale == 0 the output is the constant
    1 (power 0) or shift ** power, as Caffe fills it."""
    xp = get_array_module(x)
    if power * scale == 0:
        y.fill(1.0 if power == 0 else float(numpy.power(numpy.float64(shift), power)))
        return
    xp.multiply(x, scale, out=y)
    xp.add(y, shift, out=y)
    _raise_to(y, power)


def power_backward(dy: Array, x: Array, dx: Array, *, power: float, scale: float, shift: float,
                   ws: dict | None = None) -> None:
    """dx = dy * power * scale * (shift + scale * x) ** (power - 1).

    Caffe divides the top data by (shift + scale * x) instead, which is NaN where that base
    is 0; the power form gives the true limit there and the same values elsewhere.
    """
    xp = get_array_module(dy)
    diff_scale = power * scale
    if diff_scale == 0:
        dx.fill(0)
        return
    if power == 1:
        xp.multiply(dy, diff_scale, out=dx)
        return
    factor = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.multiply(x, scale, out=factor)
    xp.add(factor, shift, out=factor)
    _raise_to(factor, power - 1)
    xp.multiply(factor, diff_scale, out=factor)
    xp.multiply(dy, factor, out=dx)


def _log_of_base(base: float) -> float:
    """ln(base), with Caffe's base -1 meaning e."""
    if base == -1:
        return 1.0
    if base <= 0:
        raise ValueError(f"base must be positive (or -1 for e), got {base}")
    return float(numpy.log(base))


def exp_forward(x: Array, y: Array, *, base: float, scale: float, shift: float) -> None:
    """y = base ** (shift + scale * x), computed as Caffe does: base**shift * exp(ln(base) *
    scale * x). base -1 means e."""
    xp = get_array_module(x)
    log_base = _log_of_base(base)
    inner = log_base * scale
    if shift == 0:
        outer = 1.0
    else:
        outer = float(numpy.exp(shift) if base == -1 else numpy.power(base, shift))
    xp.multiply(x, inner, out=y)
    xp.exp(y, out=y)
    if outer != 1:
        xp.multiply(y, outer, out=y)


def exp_backward(dy: Array, y: Array, dx: Array, *, base: float, scale: float) -> None:
    """dx = dy * y * ln(base) * scale, from the top data (works in place)."""
    xp = get_array_module(dy)
    xp.multiply(dy, y, out=dx)
    xp.multiply(dx, _log_of_base(base) * scale, out=dx)


def log_forward(x: Array, y: Array, *, base: float, scale: float, shift: float) -> None:
    """y = log_base(shift + scale * x); base -1 means e."""
    xp = get_array_module(x)
    log_base = _log_of_base(base)
    if log_base == 0:
        raise ValueError("base 1 has no logarithm")
    xp.multiply(x, scale, out=y)
    xp.add(y, shift, out=y)
    xp.log(y, out=y)
    if log_base != 1:
        xp.multiply(y, 1.0 / log_base, out=y)


def log_backward(dy: Array, x: Array, dx: Array, *, base: float, scale: float, shift: float,
                 ws: dict | None = None) -> None:
    """dx = dy * scale / (ln(base) * (shift + scale * x)); x is the bottom data."""
    xp = get_array_module(dy)
    factor = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.multiply(x, scale, out=factor)
    xp.add(factor, shift, out=factor)
    xp.divide(scale / _log_of_base(base), factor, out=factor)
    xp.multiply(dy, factor, out=dx)


# --------------------------------------------------------------------------- Threshold, Clip


def threshold_forward(x: Array, y: Array, *, threshold: float) -> None:
    """y = 1 if x > threshold else 0. (Caffe has no backward for it.)"""
    get_array_module(x).greater(x, threshold, out=y)


def clip_forward(x: Array, y: Array, *, lo: float, hi: float) -> None:
    """y = max(lo, min(x, hi))."""
    xp = get_array_module(x)
    xp.minimum(x, hi, out=y)
    xp.maximum(y, lo, out=y)


def clip_backward(dy: Array, x: Array, dx: Array, *, lo: float, hi: float,
                  ws: dict | None = None) -> None:
    """dx = dy where lo <= x <= hi (bounds included, as Caffe), else 0."""
    xp = get_array_module(dy)
    inside = scratch(ws, "tmp", dy.shape, dy.dtype, xp)
    xp.less_equal(x, hi, out=inside)
    xp.multiply(dy, inside, out=dx)
    xp.greater_equal(x, lo, out=inside)
    xp.multiply(dx, inside, out=dx)

"""Fully-connected, softmax and elementwise kernels, forward beside backward.

    linear_forward(x, w, b, y, *, transpose)          x (M, K), w (N, K) or (K, N), y (M, N)
    linear_backward(dy, x, w, *, dx, dw, db, transpose)
    softmax_forward(x, y, *, axis)                    softmax_backward(y, dy, dx, *, axis)
    eltwise_{sum,prod,max}_forward / _backward        over a list of same-shape bottoms

Outputs and bottom gradients are assigned; parameter gradients (dw, db) accumulate.
"""

from __future__ import annotations

from netforge.ops._xp import Array, get_array_module


def linear_forward(x: Array, w: Array, b: Array | None, y: Array, *,
                   transpose: bool = False) -> None:
    """y = x · wᵀ + b (x · w when ``transpose``, Caffe's transposed weight layout)."""
    xp = get_array_module(x)
    xp.matmul(x, w if transpose else w.T, out=y)
    if b is not None:
        y += b


def linear_backward(dy: Array, x: Array, w: Array, *, dx: Array | None, dw: Array | None,
                    db: Array | None, transpose: bool = False) -> None:
    xp = get_array_module(dy)
    if dw is not None:
        # A GEMM with beta = 1 would accumulate without a temporary; numpy has no such call.
        dw += (x.T @ dy) if transpose else (dy.T @ x)
    if db is not None:
        db += dy.sum(axis=0)
    if dx is not None:
        xp.matmul(dy, w.T if transpose else w, out=dx)


def softmax_forward(x: Array, y: Array, *, axis: int = 1) -> None:
    """Numerically stable softmax along ``axis``."""
    xp = get_array_module(x)
    xp.subtract(x, x.max(axis=axis, keepdims=True), out=y)
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)


def softmax_backward(y: Array, dy: Array, dx: Array, *, axis: int = 1) -> None:
    """dx = y · (dy − Σ(dy · y) along axis)."""
    xp = get_array_module(y)
    dot = (dy * y).sum(axis=axis, keepdims=True)
    xp.subtract(dy, dot, out=dx)
    dx *= y


def eltwise_sum_forward(xs: list, coeffs: list[float], y: Array) -> None:
    xp = get_array_module(y)
    xp.multiply(xs[0], coeffs[0], out=y)
    for x, c in zip(xs[1:], coeffs[1:], strict=True):
        if c == 1.0:
            y += x
        else:
            y += c * x


def eltwise_sum_backward(dy: Array, coeffs: list[float], dxs: list) -> None:
    xp = get_array_module(dy)
    for dx, c in zip(dxs, coeffs, strict=True):
        if dx is not None:
            xp.multiply(dy, c, out=dx)


def eltwise_prod_forward(xs: list, y: Array) -> None:
    xp = get_array_module(y)
    xp.multiply(xs[0], xs[1], out=y)
    for x in xs[2:]:
        y *= x


def eltwise_prod_backward(dy: Array, xs: list, y: Array, dxs: list, *,
                          stable: bool = True) -> None:
    """dx_i = dy · Π_{j≠i} x_j (stable: recomputed products), or dy · y / x_i."""
    xp = get_array_module(dy)
    for i, dx in enumerate(dxs):
        if dx is None:
            continue
        if stable:
            xp.copyto(dx, dy)
            for j, x in enumerate(xs):
                if j != i:
                    dx *= x
        else:
            xp.divide(y, xs[i], out=dx)
            dx *= dy


def eltwise_max_forward(xs: list, y: Array, argmax: Array) -> None:
    """y = max over bottoms; ``argmax`` receives the winning bottom index (first on ties)."""
    xp = get_array_module(y)
    xp.copyto(y, xs[0])
    argmax.fill(0)
    for i, x in enumerate(xs[1:], start=1):
        greater = x > y
        argmax[greater] = i
        xp.maximum(y, x, out=y)


def eltwise_max_backward(dy: Array, argmax: Array, dxs: list) -> None:
    xp = get_array_module(dy)
    for i, dx in enumerate(dxs):
        if dx is not None:
            xp.multiply(dy, argmax == i, out=dx)

"""Elementwise activation kernels, forward beside backward. All work in place (y is x,
dx is dy) and write into caller-provided arrays.

    relu_forward(x, y, *, negative_slope)        relu_backward(dy, y, dx, *, negative_slope)
    sigmoid_forward(x, y)                        sigmoid_backward(dy, y, dx)
    tanh_forward(x, y)                           tanh_backward(dy, y, dx)
    dropout_forward(x, y, mask, ratio, rng)      dropout_backward(dy, mask, ratio, dx)
"""

from __future__ import annotations

from netforge.ops._xp import Array, get_array_module


def relu_forward(x: Array, y: Array, *, negative_slope: float = 0.0) -> None:
    """y = max(x, 0) + slope · min(x, 0)."""
    xp = get_array_module(x)
    if negative_slope == 0.0:
        xp.maximum(x, 0, out=y)
    else:
        xp.multiply(x, xp.where(x > 0, 1.0, negative_slope).astype(x.dtype), out=y)


def relu_backward(dy: Array, y: Array, dx: Array, *, negative_slope: float = 0.0) -> None:
    """dx = dy where the unit was active, slope · dy elsewhere. ``y`` may be the top data
    (y > 0 exactly where x > 0 for slope >= 0), so in-place ReLU needs no saved input."""
    xp = get_array_module(dy)
    if negative_slope == 0.0:
        xp.multiply(dy, y > 0, out=dx)
    else:
        xp.multiply(dy, xp.where(y > 0, 1.0, negative_slope).astype(dy.dtype), out=dx)


def sigmoid_forward(x: Array, y: Array) -> None:
    """y = 1 / (1 + e^-x), as 0.5·tanh(x/2) + 0.5, which never overflows."""
    xp = get_array_module(x)
    xp.multiply(x, 0.5, out=y)
    xp.tanh(y, out=y)
    y *= 0.5
    y += 0.5


def sigmoid_backward(dy: Array, y: Array, dx: Array) -> None:
    """dx = dy · y · (1 − y)."""
    xp = get_array_module(dy)
    if dx is dy:
        dx *= y
        dx *= 1 - y
    else:
        xp.subtract(1, y, out=dx)
        dx *= y
        dx *= dy


def tanh_forward(x: Array, y: Array) -> None:
    get_array_module(x).tanh(x, out=y)


def tanh_backward(dy: Array, y: Array, dx: Array) -> None:
    """dx = dy · (1 − y²)."""
    xp = get_array_module(dy)
    if dx is dy:
        dx *= 1 - y * y
    else:
        xp.multiply(y, y, out=dx)
        xp.subtract(1, dx, out=dx)
        dx *= dy


def dropout_forward(x: Array, y: Array, mask: Array, ratio: float, rng) -> None:
    """Inverted dropout: keep each unit with probability 1 − ratio, scale kept by
    1/(1 − ratio). ``mask`` (bool, x's shape) receives the kept units; ``rng`` is a numpy
    Generator (or CuPy's) owned by the caller."""
    xp = get_array_module(x)
    draws = rng.random(size=mask.shape, dtype=x.dtype if x.dtype.kind == "f" else None)
    xp.greater_equal(xp.asarray(draws), ratio, out=mask)
    xp.multiply(x, mask, out=y)
    y *= 1.0 / (1.0 - ratio)


def dropout_backward(dy: Array, mask: Array, ratio: float, dx: Array) -> None:
    xp = get_array_module(dy)
    xp.multiply(dy, mask, out=dx)
    dx *= 1.0 / (1.0 - ratio)

"""Elementwise chains in one pass over flat arrays: ReLU (leaky too) forward and backward.

Serial loops: these run between GEMMs, outside ``netforge.ops.batch_split``'s regions, where
a second thread pool would fight OpenBLAS's spinning threads for the cores (measured: a
parallel ReLU on LeNet's 64x500 took 6.6 ms instead of 0.02 ms on the loaded 2-core box).
"""

from __future__ import annotations

from netforge.ops.compiled.jit import kernel


@kernel
def _relu_forward(x, y, slope, leaky):
    zero = x.dtype.type(0)
    for k in range(x.size):
        v = x[k]
        if v <= 0:  # NaN stays NaN, as with numpy's maximum
            v = v * slope if leaky else zero
        y[k] = v


@kernel
def _relu_backward(dy, data, dx, slope):
    for k in range(dy.size):
        g = dy[k]
        dx[k] = g if data[k] > 0 else g * slope


def relu_forward(x, y, negative_slope: float) -> None:
    """y = x where x > 0, else negative_slope * x (flat views; y may be x)."""
    _relu_forward(x.reshape(-1), y.reshape(-1), x.dtype.type(negative_slope),
                  negative_slope != 0)


def relu_backward(dy, data, dx, negative_slope: float) -> None:
    """dx = dy where data > 0, else negative_slope * dy (dx may be dy)."""
    _relu_backward(dy.reshape(-1), data.reshape(-1), dx.reshape(-1),
                   dy.dtype.type(negative_slope))

"""Gradient checking for the kernel tests: a thin adapter over
``netforge.inspect.gradient_check`` (float64 central differences, relative tolerance) for
kernels called as ``forward() -> top`` with the objective sum(top * weights).

Its gradient with respect to an input is what a kernel's backward returns when fed
dy = weights. Elements flagged in ``skip`` (within a kink of ReLU or a max) are not checked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from netforge.inspect import gradient_check


def top_weights(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Fixed random weights that define the objective sum(top * weights)."""
    return np.random.default_rng(seed).standard_normal(shape)


def numeric_gradient(forward: Callable[[], np.ndarray], wrt: np.ndarray, weights: np.ndarray,
                     *, eps: float = 1e-6, skip: np.ndarray | None = None) -> np.ndarray:
    """d sum(forward() * weights) / d wrt by central differences; ``wrt`` is perturbed in
    place (and restored). Skipped elements come back as NaN."""
    return gradient_check.numeric_gradient(lambda: float(np.sum(forward() * weights)), wrt,
                                           step_size=eps, skip=skip)


def assert_gradient(analytic: np.ndarray, forward: Callable[[], np.ndarray], wrt: np.ndarray,
                    weights: np.ndarray, *, skip: np.ndarray | None = None,
                    threshold: float = 1e-5, eps: float = 1e-6, what: str = "") -> None:
    """Assert that ``analytic`` matches the numeric gradient of sum(forward() * weights)."""
    assert wrt.dtype == np.float64, "gradient checks run in float64"
    numeric = numeric_gradient(forward, wrt, weights, eps=eps, skip=skip)
    checked = ~np.isnan(numeric)
    assert checked.any(), f"{what}: every element was skipped"
    a, n = np.asarray(analytic)[checked], numeric[checked]
    bad = gradient_check.mismatched(a, n, threshold)
    if bad.any():
        where = np.argwhere(checked)[bad][:5]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {int(checked.sum())} gradient entries differ; first "
            f"at {[tuple(map(int, w)) for w in where]}: analytic {a[bad][:5]}, numeric "
            f"{n[bad][:5]}")

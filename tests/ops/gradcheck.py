"""Central-difference gradient checking for the kernel tests.

The objective is sum(top * weights) for fixed random ``weights``; its gradient with respect
to an input is what a kernel's backward returns when fed dy = weights. Agreement is judged
relative to magnitude, |a - n| <= threshold * max(|a|, |n|, 1); elements flagged in ``skip``
(within a kink of ReLU or a max) are not checked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def top_weights(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Fixed random weights that define the objective sum(top * weights)."""
    return np.random.default_rng(seed).standard_normal(shape)


def numeric_gradient(forward: Callable[[], np.ndarray], wrt: np.ndarray, weights: np.ndarray,
                     *, eps: float = 1e-6, skip: np.ndarray | None = None) -> np.ndarray:
    """d sum(forward() * weights) / d wrt by central differences; ``wrt`` is perturbed in
    place (and restored). Skipped elements come back as NaN."""
    grad = np.full(wrt.shape, np.nan)
    for idx in np.ndindex(wrt.shape):
        if skip is not None and skip[idx]:
            continue
        orig = wrt[idx]
        wrt[idx] = orig + eps
        plus = float(np.sum(forward() * weights))
        wrt[idx] = orig - eps
        minus = float(np.sum(forward() * weights))
        wrt[idx] = orig
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def assert_gradient(analytic: np.ndarray, forward: Callable[[], np.ndarray], wrt: np.ndarray,
                    weights: np.ndarray, *, skip: np.ndarray | None = None,
                    threshold: float = 1e-5, eps: float = 1e-6, what: str = "") -> None:
    """Assert that ``analytic`` matches the numeric gradient of sum(forward() * weights)."""
    assert wrt.dtype == np.float64, "gradient checks run in float64"
    numeric = numeric_gradient(forward, wrt, weights, eps=eps, skip=skip)
    checked = ~np.isnan(numeric)
    assert checked.any(), f"{what}: every element was skipped"
    a, n = np.asarray(analytic)[checked], numeric[checked]
    scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), 1.0)
    bad = np.abs(a - n) > threshold * scale
    if bad.any():
        where = np.argwhere(checked)[bad][:5]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {int(checked.sum())} gradient entries differ; first "
            f"at {[tuple(map(int, w)) for w in where]}: analytic {a[bad][:5]}, numeric "
            f"{n[bad][:5]}")

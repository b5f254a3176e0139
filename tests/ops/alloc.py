"""Allocation probe for the hot-path rule: a kernel call may create views, scalars and
numpy's iterator buffers (a ufunc on strided operands buffers up to 8192 elements per
operand: bounded, but growing until the operands reach that size), and nothing that grows
with the batch beyond that."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

# numpy's ufunc iterator may buffer up to 8192 elements per operand (fixed, not per element).
FIXED_BUDGET = 256 * 1024


def peak_bytes(step: Callable[[], object]) -> int:
    """Peak traced allocation during one call of ``step`` (after a warm-up call)."""
    step()
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_batch_independent(make_step: Callable[[int], Callable[[], object]],
                             batches: tuple[int, int] = (64, 256)) -> None:
    """Peak allocation stays within a fixed budget and does not grow with the batch size
    (both batches large enough for numpy's iterator buffers to have reached their cap)."""
    small, large = (peak_bytes(make_step(n)) for n in batches)
    assert small < FIXED_BUDGET and large < FIXED_BUDGET, (small, large)
    assert large <= small + 16 * 1024, f"allocation grows with the batch: {small} -> {large} bytes"

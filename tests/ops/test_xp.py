"""The array-module plumbing every kernel relies on."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops.xp import allocate, get_array_module, pair, scratch, view_as


def test_get_array_module_is_numpy_for_cpu_inputs_and_never_imports_cupy():
    assert get_array_module(np.zeros(2), 3.0, None) is np
    assert get_array_module() is np


def test_view_as_reshapes_without_copying_and_refuses_strided_arrays():
    a = np.arange(12.0)
    v = view_as(a, (3, 4))
    v[0, 0] = -1
    assert a[0] == -1
    with pytest.raises(ValueError, match="C-contiguous"):
        view_as(np.zeros((4, 6))[:, ::2], (12,))


def test_allocate_and_scratch():
    ws = allocate({"a": ((2, 3), np.dtype(np.float32)), "m": ((4,), np.dtype(bool))})
    assert ws["a"].shape == (2, 3) and ws["a"].dtype == np.float32
    assert ws["m"].dtype == bool
    assert scratch(ws, "a", (2, 3), np.float32, np) is ws["a"]
    fresh = scratch(ws, "missing", (5,), np.float64, np)
    assert fresh.shape == (5,) and fresh.dtype == np.float64
    assert scratch(None, "a", (1,), np.float32, np).shape == (1,)
    assert pair(3) == (3, 3) and pair((2, 5)) == (2, 5)

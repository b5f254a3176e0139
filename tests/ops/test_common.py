"""InnerProduct, softmax, eltwise and concat kernels."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops.common import (
    concat_backward,
    concat_forward,
    eltwise_max_backward,
    eltwise_max_forward,
    eltwise_prod_backward,
    eltwise_prod_forward,
    eltwise_sum_backward,
    eltwise_sum_forward,
    eltwise_workspace_shapes,
    linear_backward,
    linear_forward,
    linear_workspace_shapes,
    softmax_backward,
    softmax_forward,
    softmax_workspace_shapes,
)
from netforge.ops.xp import allocate
from tests.ops import naive
from tests.ops.alloc import assert_batch_independent
from tests.ops.gradcheck import assert_gradient, top_weights


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# --------------------------------------------------------------------------- linear


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("transpose", [False, True], ids=["w(N,K)", "w(K,N)"])
def test_linear_forward_and_gradcheck(transpose, bias):
    m, k, n = 4, 6, 3
    x = _rand((m, k))
    w = _rand((k, n) if transpose else (n, k), 1)
    b = _rand(n, 2) if bias else None
    y = np.empty((m, n))
    linear_forward(x, w, b, y, transpose=transpose)
    ref = x @ (w if transpose else w.T) + (0 if b is None else b)
    np.testing.assert_allclose(y, ref, rtol=1e-13)

    dy = top_weights(y.shape)
    dx, dw = np.full_like(x, np.nan), np.zeros_like(w)
    db = None if b is None else np.zeros_like(b)
    linear_backward(dy, x, w, dx=dx, dw=dw, db=db, transpose=transpose,
                    ws=allocate(linear_workspace_shapes(w.shape, transpose=transpose,
                                                        dtype=w.dtype)))

    def forward():
        linear_forward(x, w, b, y, transpose=transpose)
        return y

    assert_gradient(dx, forward, x, dy, what="dx")
    assert_gradient(dw, forward, w, dy, what="dw")
    if b is not None:
        assert_gradient(db, forward, b, dy, what="db")


def test_linear_param_gradients_accumulate_and_dx_is_optional():
    x, w, b = _rand((5, 4)), _rand((3, 4), 1), _rand(3, 2)
    dy = top_weights((5, 3))
    dx, dw1, db1 = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    linear_backward(dy, x, w, dx=dx, dw=dw1, db=db1)
    dw2, db2 = np.zeros_like(w), np.zeros_like(b)
    for _ in range(2):
        linear_backward(dy, x, w, dx=None, dw=dw2, db=db2)
    np.testing.assert_allclose(dw2, 2 * dw1, rtol=1e-13)
    np.testing.assert_allclose(db2, 2 * db1, rtol=1e-13)
    dx2 = np.full_like(x, np.nan)
    linear_backward(dy, x, w, dx=dx2, dw=None, db=None)
    np.testing.assert_array_equal(dx2, dx)


# --------------------------------------------------------------------------- softmax

SOFTMAX_CASES = [((5, 7), 1), ((2, 3, 4, 2), 1), ((2, 3, 4), 2), ((3, 4), 0)]


@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in-place"])
@pytest.mark.parametrize("shape, axis", SOFTMAX_CASES)
def test_softmax_forward_and_gradcheck(shape, axis, in_place):
    x = _rand(shape) * 3
    x.flat[0] = 800.0  # exp would overflow without the max subtraction
    ref = naive.softmax(x, axis)
    ws = allocate(softmax_workspace_shapes(shape, axis, x.dtype))
    y = x.copy() if in_place else np.empty_like(x)
    with np.errstate(over="raise"):
        softmax_forward(y if in_place else x, y, axis=axis, ws=ws)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-300)

    x = _rand(shape, 1)
    dy = top_weights(shape)
    softmax_forward(x, y, axis=axis, ws=ws)
    dx = dy.copy() if in_place else np.empty_like(x)
    softmax_backward(y, dx if in_place else dy, dx, axis=axis, ws=ws)
    y2 = np.empty_like(x)

    def forward():
        softmax_forward(x, y2, axis=axis)
        return y2

    assert_gradient(dx, forward, x, dy, what="softmax")


# --------------------------------------------------------------------------- eltwise

SHAPE = (2, 3, 4)


def test_eltwise_sum_with_coefficients():
    xs = [_rand(SHAPE, i) for i in range(4)]
    coeffs = [1.0, -1.0, 0.5, 2.0]
    y = np.empty(SHAPE)
    eltwise_sum_forward(xs, coeffs, y, ws=allocate(eltwise_workspace_shapes(SHAPE, y.dtype)))
    np.testing.assert_allclose(y, sum(c * x for c, x in zip(coeffs, xs, strict=True)))
    dy = top_weights(SHAPE)
    dxs = [np.empty(SHAPE), None, np.empty(SHAPE), np.empty(SHAPE)]
    eltwise_sum_backward(dy, coeffs, dxs)

    def forward():
        eltwise_sum_forward(xs, coeffs, y)
        return y

    for i, dx in enumerate(dxs):
        if dx is not None:
            assert_gradient(dx, forward, xs[i], dy, what=f"sum dx{i}")


@pytest.mark.parametrize("stable", [True, False], ids=["stable", "divide"])
@pytest.mark.parametrize("count", [2, 3])
def test_eltwise_prod_forward_and_gradcheck(count, stable):
    xs = [_rand(SHAPE, i) + 2.0 for i in range(count)]  # away from 0 for the divide form
    y = np.empty(SHAPE)
    eltwise_prod_forward(xs, y)
    np.testing.assert_allclose(y, np.prod(xs, axis=0), rtol=1e-13)
    dy = top_weights(SHAPE)
    dxs = [np.empty(SHAPE) for _ in xs]
    eltwise_prod_backward(dy, xs, y, dxs, stable=stable)

    def forward():
        eltwise_prod_forward(xs, y)
        return y

    for i, x in enumerate(xs):
        assert_gradient(dxs[i], forward, x, dy, what=f"prod dx{i}")


def test_eltwise_prod_stable_gradient_survives_a_zero_input():
    xs = [np.array([0.0, 2.0]), np.array([3.0, 4.0])]
    y, dx = np.empty(2), [np.empty(2), np.empty(2)]
    eltwise_prod_forward(xs, y)
    eltwise_prod_backward(np.ones(2), xs, y, dx, stable=True)
    np.testing.assert_array_equal(dx[0], [3.0, 4.0])
    np.testing.assert_array_equal(dx[1], [0.0, 2.0])


def test_eltwise_max_follows_caffe_tie_rule():
    # Bottoms 0 and 1 tie -> bottom 1 (bottom 0 must be strictly greater); a later bottom
    # must be strictly greater than the running max to win.
    a = np.array([1.0, 5.0, 2.0, 0.0])
    b = np.array([1.0, 4.0, 3.0, 0.0])
    c = np.array([1.0, 5.0, 3.0, 7.0])
    y, argmax = np.empty(4), np.empty(4, np.int32)
    eltwise_max_forward([a, b, c], y, argmax)
    np.testing.assert_array_equal(y, [1.0, 5.0, 3.0, 7.0])
    np.testing.assert_array_equal(argmax, [1, 0, 1, 2])
    dxs = [np.empty(4), None, np.empty(4)]
    eltwise_max_backward(np.array([1.0, 2.0, 3.0, 4.0]), argmax, dxs)
    np.testing.assert_array_equal(dxs[0], [0.0, 2.0, 0.0, 0.0])
    np.testing.assert_array_equal(dxs[2], [0.0, 0.0, 0.0, 4.0])


def test_eltwise_max_gradcheck():
    xs = [_rand(SHAPE, i) for i in range(3)]
    y, argmax = np.empty(SHAPE), np.empty(SHAPE, np.intp)
    eltwise_max_forward(xs, y, argmax)
    dy = top_weights(SHAPE)
    dxs = [np.empty(SHAPE) for _ in xs]
    eltwise_max_backward(dy, argmax, dxs)
    # Skip elements whose bottom is within 1e-2 of another bottom: a max kink.
    stack = np.stack(xs)
    gaps = np.abs(stack[:, None] - stack[None, :])
    gaps[np.arange(3), np.arange(3)] = np.inf  # an element is no kink with itself
    near = (gaps < 1e-2).any(axis=1)

    def forward():
        eltwise_max_forward(xs, y, argmax)
        return y

    for i, x in enumerate(xs):
        assert_gradient(dxs[i], forward, x, dy, skip=near[i], what=f"max dx{i}")


# --------------------------------------------------------------------------- concat


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_concat_and_its_backward_slice(axis):
    widths = [1, 3, 2]
    shapes = []
    for w in widths:
        shape = [2, 3, 4]
        shape[axis] = w
        shapes.append(tuple(shape))
    xs = [_rand(s, i) for i, s in enumerate(shapes)]
    out_shape = list(shapes[0])
    out_shape[axis] = sum(widths)
    y = np.empty(out_shape)
    concat_forward(xs, y, axis=axis)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=axis))
    dxs = [np.empty(s) for s in shapes]
    dxs[1] = None
    concat_backward(y, dxs, axis=axis, widths=widths)
    np.testing.assert_array_equal(dxs[0], xs[0])
    np.testing.assert_array_equal(dxs[2], xs[2])
    with pytest.raises(ValueError, match="widths"):
        concat_backward(y, dxs, axis=axis)

    dy = top_weights(y.shape)
    dxs = [np.empty(s) for s in shapes]
    concat_backward(dy, dxs, axis=axis)

    def forward():
        concat_forward(xs, y, axis=axis)
        return y

    for i, x in enumerate(xs):
        assert_gradient(dxs[i], forward, x, dy, what=f"concat dx{i}")


# --------------------------------------------------------------------------- allocation


@pytest.mark.parametrize("op", ["linear", "softmax", "eltwise-sum", "eltwise-max"])
def test_common_steps_do_not_allocate(op):
    def make_step(batch):
        rng = np.random.default_rng(0)
        if op == "linear":
            x, w, b = (rng.standard_normal(s).astype(np.float32)
                       for s in ((batch, 800), (500, 800), (500,)))
            y = np.empty((batch, 500), np.float32)
            dy, dx, dw, db = np.ones_like(y), np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
            ws = allocate(linear_workspace_shapes(w.shape, dtype=np.float32))
            return lambda: (linear_forward(x, w, b, y),
                            linear_backward(dy, x, w, dx=dx, dw=dw, db=db, ws=ws))
        x = rng.standard_normal((batch, 10, 6, 6)).astype(np.float32)
        y, dy, dx = np.empty_like(x), np.ones_like(x), np.empty_like(x)
        if op == "softmax":
            ws = allocate(softmax_workspace_shapes(x.shape, 1, x.dtype))
            return lambda: (softmax_forward(x, y, ws=ws), softmax_backward(y, dy, dx, ws=ws))
        ws = allocate(eltwise_workspace_shapes(x.shape, x.dtype))
        xs = [x, x * 2, x * 3]
        if op == "eltwise-sum":
            return lambda: eltwise_sum_forward(xs, [1.0, -1.0, 0.5], y, ws=ws)
        argmax = np.empty(x.shape, np.int32)
        return lambda: (eltwise_max_forward(xs, y, argmax, ws=ws),
                        eltwise_max_backward(dy, argmax, [dx, None, dx], ws=ws))

    assert_batch_independent(make_step, batches=(32, 128))


@pytest.mark.parametrize("transpose", [False, True], ids=["plain", "transposed"])
def test_linear_weight_gradient_in_row_blocks_matches_the_product(monkeypatch, transpose):
    from netforge.ops import common

    monkeypatch.setattr(common, "LINEAR_STAGE", 20)  # blocks of 2 rows of 7 or 5 columns
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 7)), rng.standard_normal((4, 5))
    w = rng.standard_normal((7, 5) if transpose else (5, 7))
    dw = np.full_like(w, 0.5)  # accumulated into
    ws = allocate(linear_workspace_shapes(w.shape, transpose=transpose, dtype=np.float64))
    assert ws["dw"].shape[0] < w.shape[0]
    linear_backward(dy, x, w, dx=None, dw=dw, db=None, transpose=transpose, ws=ws)
    expected = 0.5 + (x.T @ dy if transpose else dy.T @ x)
    np.testing.assert_allclose(dw, expected, rtol=1e-12)

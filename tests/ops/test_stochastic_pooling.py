"""Caffe's STOCHASTIC pooling: TEST against naive loops, TRAIN against naive loops given the
same uniform draws, backward against central differences; sampling frequencies follow the
values."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops.pooling import pool_output_size
from netforge.ops.stochastic_pooling import (
    stochastic_pool_backward_test,
    stochastic_pool_backward_train,
    stochastic_pool_forward_test,
    stochastic_pool_forward_train,
    stochastic_pool_workspace_shapes,
)
from netforge.ops.xp import allocate, pair
from tests.ops import naive
from tests.ops.alloc import assert_batch_independent
from tests.ops.gradcheck import assert_gradient, top_weights


def _out_shape(xs, kernel, stride):
    (kh, kw), (sh, sw) = pair(kernel), pair(stride)
    return (xs[0], xs[1], pool_output_size(xs[2], kh, 0, sh), pool_output_size(xs[3], kw, 0, sw))

# id, x shape, kernel, stride (no padding: Caffe's STOCHASTIC takes none)
STOCHASTIC_CASES = [
    ("2x2s2-tiled", (2, 3, 6, 6), 2, 2),
    ("3x3s2-overlap-ceil", (2, 2, 6, 7), 3, 2),
    ("stride>kernel-empty-window", (1, 2, 9, 9), 2, 3),
    ("rect", (2, 1, 5, 7), (2, 3), (1, 2)),
    ("global", (2, 2, 3, 4), (3, 4), 1),
]
STOCHASTIC_IDS = [case[0] for case in STOCHASTIC_CASES]


def _positive(xs, seed=0):
    """Distinct positive values: sampling weights, with no running sum within 1e-6 of a
    threshold under the fixed draws below."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(xs))
    return (rng.permutation(size) + 1.0).reshape(xs) / size


def _stochastic(x, kernel, stride):
    y = np.empty(_out_shape(x.shape, kernel, stride), x.dtype)
    index = np.empty(y.shape, np.int32)
    ws = allocate(stochastic_pool_workspace_shapes(x.shape, y.shape, kernel=kernel,
                                                   stride=stride, dtype=x.dtype,
                                                   index_dtype=np.int32))
    return y, index, {"kernel": kernel, "stride": stride, "ws": ws}


@pytest.mark.parametrize("case", STOCHASTIC_CASES, ids=STOCHASTIC_IDS)
def test_stochastic_test_forward_matches_naive_and_gradient_checks(case):
    _, xs, kernel, stride = case
    x = _positive(xs)
    y, _, geo = _stochastic(x, kernel, stride)
    stochastic_pool_forward_test(x, y, **geo)
    np.testing.assert_allclose(y, naive.stochastic_pool_test(x, pair(kernel), pair(stride)),
                               rtol=1e-12, atol=1e-14)
    dy = top_weights(y.shape)
    dx = np.full_like(x, np.nan)
    stochastic_pool_backward_test(dy, x, dx, **geo)

    def forward():
        stochastic_pool_forward_test(x, y, **geo)
        return y

    assert_gradient(dx, forward, x, dy, what="stochastic TEST dx")


@pytest.mark.parametrize("case", STOCHASTIC_CASES, ids=STOCHASTIC_IDS)
def test_stochastic_train_matches_naive_given_the_draws_and_gradient_checks(case):
    _, xs, kernel, stride = case
    x = _positive(xs)
    y, index, geo = _stochastic(x, kernel, stride)
    stochastic_pool_forward_train(x, y, index, rng=np.random.default_rng(11), **geo)
    uniform = np.random.default_rng(11).random(y.shape)  # the same draws, in output order
    ref_y, ref_index = naive.stochastic_pool_train(x, pair(kernel), pair(stride), uniform)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(index, ref_index)
    dy = top_weights(y.shape)
    dy[index == -1] = 0  # a window with no pixel has nothing to route to
    dx = np.full_like(x, np.nan)
    stochastic_pool_backward_train(dy, index, dx, **geo)

    def forward():  # the same draws each time: the sample is fixed, the values move
        stochastic_pool_forward_train(x, y, index, rng=np.random.default_rng(11), **geo)
        return y

    assert_gradient(dx, forward, x, dy, what="stochastic TRAIN dx")


def test_stochastic_zero_windows_and_float32():
    # An all-zero window: TRAIN takes its first pixel (0 >= u * 0), TEST gives 0 / FLT_MIN.
    x = np.zeros((1, 1, 2, 4), np.float32)
    x[0, 0, :, 2:] = [[1.0, 3.0], [0.0, 0.0]]
    y, index, geo = _stochastic(x, 2, 2)
    stochastic_pool_forward_train(x, y, index, rng=np.random.default_rng(0), **geo)
    assert y.dtype == np.float32
    assert index[0, 0, 0, 0] == 0 and y[0, 0, 0, 0] == 0
    assert index[0, 0, 0, 1] in (2, 3)
    stochastic_pool_forward_test(x, y, **geo)
    np.testing.assert_allclose(y[0, 0, 0], [0.0, 10.0 / 4.0], rtol=1e-6)


def test_stochastic_train_frequencies_follow_the_values():
    """5000 copies of one 3x1 window [1, 0, 3]: the zero is never drawn, the others about
    1:3 (4-sigma bounds)."""
    x = np.tile(np.array([1.0, 0.0, 3.0]).reshape(1, 1, 3, 1), (50, 100, 1, 1))
    y, index, geo = _stochastic(x, (3, 1), 1)
    stochastic_pool_forward_train(x, y, index, rng=np.random.default_rng(3), **geo)
    assert set(np.unique(index)) == {0, 2}
    share_of_3 = (index == 2).mean()
    assert abs(share_of_3 - 0.75) < 4 * np.sqrt(0.75 * 0.25 / index.size)


def test_stochastic_step_does_not_allocate():
    def make_step(batch):
        x = _positive((batch, 8, 12, 12)).astype(np.float32)
        y, index, geo = _stochastic(x, 3, 2)
        dy, dx = np.ones_like(y), np.empty_like(x)
        rng = np.random.default_rng(0)
        return lambda: (stochastic_pool_forward_train(x, y, index, rng=rng, **geo),
                        stochastic_pool_backward_train(dy, index, dx, **geo),
                        stochastic_pool_forward_test(x, y, **geo),
                        stochastic_pool_backward_test(dy, x, dx, **geo))

    assert_batch_independent(make_step)

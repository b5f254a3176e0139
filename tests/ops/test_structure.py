"""Structure kernels alone: Caffe's shape rules (from the examples in caffe.proto's comments),
the ArgMax tie rule, index checks, and gradients of the scatter kernels."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops import structure as ops
from netforge.ops.xp import allocate
from tests.ops.gradcheck import assert_gradient, top_weights

# caffe.proto: "suppose input is a 2D blob with shape 2 x 8 ..." -> (dims, axis, num_axes, top)
RESHAPE_EXAMPLES = [
    ([2, 2, 4], 0, -1, (2, 2, 4)),
    ([0, 2, 4], 0, -1, (2, 2, 4)),
    ([0, 2, -1], 0, -1, (2, 2, 4)),
    ([0, -1, 4], 0, -1, (2, 2, 4)),
    ([2, 4], 1, -1, (2, 2, 4)),
    ([2, 4], -2, -1, (2, 2, 4)),
    ([1, 2, 8], 0, -1, (1, 2, 8)),
    ([1, 2], 0, 1, (1, 2, 8)),
    ([1], 0, 0, (1, 2, 8)),
    ([2, 1, 8], 0, -1, (2, 1, 8)),
    ([1], 1, 0, (2, 1, 8)),
    ([1], -1, 0, (2, 8, 1)),  # -1: after the last axis, replacing nothing
]


@pytest.mark.parametrize("dims, axis, num_axes, top", RESHAPE_EXAMPLES)
def test_reshape_rule_matches_the_caffe_proto_examples(dims, axis, num_axes, top):
    assert ops.reshape_top_shape((2, 8), dims, axis, num_axes) == top


@pytest.mark.parametrize("dims, axis, num_axes, match", [
    ([-1, -1], 0, -1, "more than one -1"),
    ([3, -1], 0, -1, "not divisible"),
    ([0, 0, 0], 0, -1, "no axis 2"),
    ([-2, 8], 0, -1, ">= -1"),
    ([4], 3, -1, "out of range"),
    ([4], 1, 2, "runs past"),
    ([4], 0, -2, "num_axes"),
    ([3, 3], 0, -1, "holds 9 values"),
])
def test_reshape_rule_errors(dims, axis, num_axes, match):
    with pytest.raises(ValueError, match=match):
        ops.reshape_top_shape((2, 8), dims, axis, num_axes)


def test_slice_sizes():
    assert ops.slice_sizes(6, [], 3) == [2, 2, 2]
    assert ops.slice_sizes(6, [1, 5], 3) == [1, 4, 1]
    for points, tops in (([2], 3), ([3, 3], 3), ([7], 2)):
        with pytest.raises(ValueError):
            ops.slice_sizes(6, points, tops)
    with pytest.raises(ValueError, match="evenly"):
        ops.slice_sizes(7, [], 2)


def test_argmax_ranks_ties_by_larger_index_first():
    x = np.array([[5.0, 1.0, 5.0, 5.0, 0.0]])
    y = np.zeros((1, 2, 4))
    ops.argmax_forward(x, y, top_k=4, out_max_val=True)
    np.testing.assert_array_equal(y[0, 0], [3, 2, 0, 1])
    np.testing.assert_array_equal(y[0, 1], [5, 5, 5, 1])
    assert ops.argmax_top_shape((3, 5), top_k=2, axis=None, out_max_val=False) == (3, 1, 2)
    assert ops.argmax_top_shape((3, 5, 2, 2), top_k=2, axis=None,
                                out_max_val=True) == (3, 2, 2, 1)
    assert ops.argmax_top_shape((3, 5, 2), top_k=2, axis=1, out_max_val=True) == (3, 2, 2)


@pytest.mark.parametrize("op", ops.REDUCTIONS)
def test_reduction_gradient(op):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    y, dx = np.empty((2, 3)), np.empty_like(x)
    ws = allocate(ops.reduction_workspace_shapes(x.shape, 2, op, x.dtype))
    w = top_weights(y.shape)
    ops.reduction_backward(x, w, dx, axis=2, op=op, coeff=-1.5)

    def forward():
        ops.reduction_forward(x, y, axis=2, op=op, coeff=-1.5, ws=ws)
        return y

    assert_gradient(dx, forward, x, w, what=op)


def test_batch_reindex_and_embed_scatter_gradients():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2))
    index = np.array([1.0, 1.0, 0.0, 1.0])
    y, dx = np.empty((4, 2)), np.empty_like(x)
    w = top_weights(y.shape)
    ops.batch_reindex_backward(w, index, dx, ws=allocate(ops.batch_reindex_workspace_shapes(4)))
    np.testing.assert_allclose(dx, [w[2], w[0] + w[1] + w[3], [0, 0]])

    def reindex():
        ops.batch_reindex_forward(x, index, y)
        return y

    assert_gradient(dx, reindex, x, w, what="batch_reindex")

    table, bias = rng.standard_normal((3, 2)), rng.standard_normal(2)
    dw, db = np.full_like(table, 0.5), np.full_like(bias, 0.25)  # gradients accumulate
    out = np.empty((4, 2))
    ops.embed_backward(index, w, dw, db)

    def embed():
        ops.embed_forward(index, table, bias, out)
        return out

    assert_gradient(dw - 0.5, embed, table, w, what="embed weights")
    assert_gradient(db - 0.25, embed, bias, w, what="embed bias")


@pytest.mark.parametrize("index, match", [([-1.0], "-1 is outside"), ([3.0], "3 is outside")])
def test_index_range_is_checked(index, match):
    with pytest.raises(ValueError, match=match):
        ops.batch_reindex_forward(np.zeros((3, 2)), np.array(index), np.empty((1, 2)))


def test_filter_and_tile_kernels():
    x = np.arange(12.0).reshape(4, 3)
    rows = ops.selected_rows(np.array([0.0, -2.0, 0.0, 0.5]).reshape(4, 1))
    np.testing.assert_array_equal(rows, [1, 3])
    y = np.empty((2, 3))
    ops.filter_forward(x, rows, y)
    np.testing.assert_array_equal(y, x[[1, 3]])
    dx = np.full_like(x, np.nan)
    ops.filter_backward(y, rows, dx)
    np.testing.assert_array_equal(dx, [[0, 0, 0], x[1], [0, 0, 0], x[3]])

    t = np.empty((4, 6))
    ops.tile_forward(x, t, axis=1, tiles=2)
    np.testing.assert_array_equal(t, np.hstack([x, x]))
    back = np.empty_like(x)
    ops.tile_backward(t, back, axis=1, tiles=2)
    np.testing.assert_array_equal(back, 2 * x)

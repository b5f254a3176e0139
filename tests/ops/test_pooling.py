"""Caffe MAX/AVE pooling: forward against naive loops, backward against central
differences, on the border cases Caffe's rules are about."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops import spp
from netforge.ops.pooling import (
    ave_pool_backward,
    ave_pool_forward,
    ave_pool_workspace_shapes,
    max_pool_backward,
    max_pool_forward,
    max_pool_workspace_shapes,
    pool_output_size,
)
from netforge.ops.xp import allocate
from tests.ops import naive
from tests.ops.alloc import assert_batch_independent
from tests.ops.gradcheck import assert_gradient, top_weights


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# id, x shape, kernel, stride, pad
POOL_CASES = [
    ("2x2s2-tiled", (2, 3, 8, 8), 2, 2, 0),
    ("3x3s2-overlap", (2, 2, 7, 7), 3, 2, 0),
    ("ceil-overhang", (2, 2, 6, 6), 3, 2, 0),
    ("pad1-last-window-dropped", (1, 2, 5, 5), 2, 2, 1),
    ("pad1-3x3s2", (2, 2, 7, 7), 3, 2, 1),
    ("pad2-3x3s1", (1, 2, 5, 5), 3, 1, 2),
    ("stride>kernel", (2, 2, 9, 9), 2, 3, 0),
    ("stride>kernel-pad", (1, 2, 8, 8), 2, 3, 1),
    ("non-square", (2, 2, 10, 7), (3, 2), (2, 1), (1, 1)),
    ("tiled-rect", (2, 2, 6, 9), (2, 3), (2, 3), 0),
    ("global", (2, 3, 5, 6), (5, 6), 1, 0),
    ("global-1x1", (2, 3, 1, 1), 1, 1, 0),
    # More than 255 window positions: the position codes need 16 bits.
    ("16x17-window", (1, 1, 17, 18), (16, 17), 1, 0),
]
IDS = [case[0] for case in POOL_CASES]


def _out_shape(xs, kernel, stride, pad):
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
    return (xs[0], xs[1], pool_output_size(xs[2], kh, ph, sh), pool_output_size(xs[3], kw, pw, sw))


def _distinct(xs, seed=0):
    """Values 0.05 apart in random order: no ties, no argmax flips under a 1e-6 step."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(xs))
    return (rng.permutation(size) * 0.05 - size * 0.025).reshape(xs)


def _max(x, kernel, stride, pad, index_dtype=np.intp):
    y = np.empty(_out_shape(x.shape, kernel, stride, pad), x.dtype)
    argmax = np.empty(y.shape, index_dtype)
    ws = allocate(max_pool_workspace_shapes(x.shape, y.shape, kernel=kernel, stride=stride,
                                            pad=pad, index_dtype=index_dtype, dtype=x.dtype))
    geo = {"kernel": kernel, "stride": stride, "pad": pad, "ws": ws}
    return y, argmax, geo


def _ave(x, kernel, stride, pad):
    y = np.empty(_out_shape(x.shape, kernel, stride, pad), x.dtype)
    ws = allocate(ave_pool_workspace_shapes(x.shape, y.shape, kernel=kernel, stride=stride,
                                            pad=pad, dtype=x.dtype))
    return y, {"kernel": kernel, "stride": stride, "pad": pad, "ws": ws}


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", POOL_CASES, ids=IDS)
def test_max_pool_forward_matches_naive(case, ties):
    _, xs, kernel, stride, pad = case
    rng = np.random.default_rng(1)
    # Ties: small integers, so windows hold equal maxima and the first must win; negative
    # values too, so that padding (which never wins) would show if it took part.
    x = rng.integers(-3, 1, xs).astype(np.float64) if ties else _distinct(xs)
    y, argmax, geo = _max(x, kernel, stride, pad, np.int32)
    max_pool_forward(x, y, argmax, **geo)
    ref_y, ref_arg = naive.max_pool(x, _pair(kernel), _pair(stride), _pair(pad))
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(argmax, ref_arg)


@pytest.mark.parametrize("case", POOL_CASES, ids=IDS)
def test_max_pool_backward_gradcheck(case):
    _, xs, kernel, stride, pad = case
    x = _distinct(xs)
    y, argmax, geo = _max(x, kernel, stride, pad)
    dy = top_weights(y.shape)
    dx = np.full_like(x, np.nan)  # assigned: stale contents must not leak through
    max_pool_forward(x, y, argmax, **geo)
    # A window wholly past the image (ceil mode, stride > kernel) holds -FLT_MAX, as in
    # Caffe; keep it out of the objective, where it would swamp the differences.
    dy[argmax == -1] = 0
    max_pool_backward(dy, argmax, dx, **geo)

    def forward():
        max_pool_forward(x, y, argmax, **geo)
        return y

    assert_gradient(dx, forward, x, dy, what="max pool dx")


@pytest.mark.parametrize("case", POOL_CASES, ids=IDS)
def test_ave_pool_forward_matches_naive(case):
    _, xs, kernel, stride, pad = case
    x = np.random.default_rng(2).standard_normal(xs)
    y, geo = _ave(x, kernel, stride, pad)
    ave_pool_forward(x, y, **geo)
    ref = naive.ave_pool(x, _pair(kernel), _pair(stride), _pair(pad))
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", POOL_CASES, ids=IDS)
def test_ave_pool_backward_gradcheck(case):
    _, xs, kernel, stride, pad = case
    x = np.random.default_rng(3).standard_normal(xs)
    y, geo = _ave(x, kernel, stride, pad)
    dy = top_weights(y.shape)
    dx = np.full_like(x, np.nan)
    ave_pool_backward(dy, dx, **geo)

    def forward():
        ave_pool_forward(x, y, **geo)
        return y

    assert_gradient(dx, forward, x, dy, what="ave pool dx")


def test_ave_divisor_counts_padding_but_not_overhang():
    # 1x1x3x3 ones, kernel 3, stride 2, pad 1: ceil gives 2x2 outputs. Window (0, 0) spans
    # rows/cols [-1, 2) -> 4 real pixels over a padded window of 9. Window (1, 1) spans
    # [1, 4) clipped to the padded extent [-1, 4) -> size 3x3 = 9, with 4 real pixels.
    x = np.ones((1, 1, 3, 3))
    y, geo = _ave(x, 3, 2, 1)
    ave_pool_forward(x, y, **geo)
    np.testing.assert_allclose(y[0, 0], [[4 / 9, 4 / 9], [4 / 9, 4 / 9]])
    # Without padding the ceil-mode overhang is not counted: x 1x1x4x4, k 3, s 2 -> 2x2;
    # window (1, 1) covers rows/cols [2, 5) clipped to [2, 4): divisor 2x2 = 4.
    x = np.ones((1, 1, 4, 4))
    y, geo = _ave(x, 3, 2, 0)
    ave_pool_forward(x, y, **geo)
    np.testing.assert_allclose(y[0, 0], [[1.0, 1.0], [1.0, 1.0]])


def test_window_past_the_image_is_caffe_empty_window():
    # 9 pixels, kernel 2, stride 3, no pad, ceil: windows start at 0, 3, 6 and 9; the last
    # one holds no pixel. Caffe: MAX gives -FLT_MAX with index -1 (and no gradient).
    x = np.arange(9.0).reshape(1, 1, 1, 9)
    y, argmax, geo = _max(x, (1, 2), (1, 3), 0)
    max_pool_forward(x, y, argmax, **geo)
    np.testing.assert_array_equal(y[0, 0, 0], [1, 4, 7, -np.finfo(np.float32).max])
    np.testing.assert_array_equal(argmax[0, 0, 0], [1, 4, 7, -1])
    dx = np.empty_like(x)
    max_pool_backward(np.ones_like(y), argmax, dx, **geo)
    np.testing.assert_array_equal(dx[0, 0, 0], [0, 1, 0, 0, 1, 0, 0, 1, 0])


def test_max_pool_padding_never_wins_and_float32_runs():
    x = -np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)  # all negative
    y, argmax, geo = _max(x, 3, 2, 1, np.int32)
    max_pool_forward(x, y, argmax, **geo)
    assert y.dtype == np.float32
    # 3x3 outputs: windows start at rows/cols -1, 1, 3; the least negative real pixel wins.
    np.testing.assert_array_equal(y[0, 0], [[-1, -2, -4], [-5, -6, -8], [-13, -14, -16]])
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1, 3], [4, 5, 7], [12, 13, 15]])


@pytest.mark.parametrize(
    "size, kernel, pad, stride, ceil_mode, expected",
    [(24, 2, 0, 2, True, 12), (8, 2, 0, 2, True, 4), (7, 3, 0, 2, True, 3),
     (6, 3, 0, 2, True, 3), (6, 3, 0, 2, False, 2), (5, 2, 1, 2, True, 3),
     (7, 3, 1, 2, True, 4), (9, 2, 0, 3, True, 4), (9, 2, 0, 3, False, 3),
     (13, 3, 0, 2, True, 6), (112, 3, 0, 2, True, 56), (112, 3, 1, 2, True, 57),
     (5, 5, 0, 1, True, 1)],
)
def test_pool_output_size(size, kernel, pad, stride, ceil_mode, expected):
    assert pool_output_size(size, kernel, pad, stride, ceil_mode) == expected
    assert naive.pool_size(size, kernel, pad, stride, ceil_mode) == expected


@pytest.mark.parametrize("method", ["max", "ave"])
@pytest.mark.parametrize(
    "xs, kernel, stride, pad",
    [((8, 20, 24, 24), 2, 2, 0), ((8, 8, 13, 13), 3, 2, 1), ((8, 16, 7, 7), 7, 1, 0)],
    ids=["tiled", "overlap-pad", "global"],
)
def test_pooling_step_does_not_allocate(method, xs, kernel, stride, pad):
    def make_step(batch):
        x = np.random.default_rng(0).standard_normal((batch, *xs[1:])).astype(np.float32)
        dx = np.empty_like(x)
        if method == "max":
            y, argmax, geo = _max(x, kernel, stride, pad, np.int32)
            dy = np.ones_like(y)
            return lambda: (max_pool_forward(x, y, argmax, **geo),
                            max_pool_backward(dy, argmax, dx, **geo))
        y, geo = _ave(x, kernel, stride, pad)
        dy = np.ones_like(y)
        return lambda: (ave_pool_forward(x, y, **geo), ave_pool_backward(dy, dx, **geo))

    assert_batch_independent(make_step)


# --------------------------------------------------------------------------- SPP geometry


@pytest.mark.parametrize("size, bins, kernel, pad, out", [
    (13, 1, 13, 0, 1), (13, 2, 7, 1, 2), (13, 4, 4, 2, 4), (6, 4, 2, 1, 4), (8, 4, 2, 0, 4),
    (3, 2, 2, 1, 2), (7, 4, 2, 1, 4),
])
def test_spp_level_geometry_is_caffes(size, bins, kernel, pad, out):
    """kernel = ceil(size / bins), pad = (kernel * bins - size + 1) // 2, stride = kernel;
    the output comes from the pooling size rule."""
    level = bins.bit_length() - 1
    lv = spp.spp_levels(size, size, level + 1)[level]
    assert (lv.kernel, lv.stride, lv.pad, lv.out) == ((kernel,) * 2, (kernel,) * 2,
                                                       (pad,) * 2, (out,) * 2)


def test_spp_refuses_a_level_whose_pad_reaches_its_kernel():
    with pytest.raises(ValueError, match="4x4 bins"):
        spp.spp_levels(5, 8, 3)  # height 5 in 4 bins: kernel 2, pad 2

"""Normalisation kernels: reductions, BatchNorm statistics, LRN's fast powers in float32,
and the hot-path rule (no allocation that grows with the batch)."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops.normalization import (
    ACROSS_CHANNELS,
    WITHIN_CHANNEL,
    batch_norm_backward_global,
    batch_norm_backward_train,
    batch_norm_forward_global,
    batch_norm_forward_train,
    batch_norm_global_stats,
    batch_norm_update_stats,
    batch_norm_workspace_shapes,
    bias_forward,
    channel_sum_workspace_shapes,
    channel_sums,
    lrn_backward,
    lrn_forward,
    lrn_workspace_shapes,
    mvn_backward,
    mvn_forward,
    mvn_workspace_shapes,
    row_sums,
    scale_backward,
    scale_forward,
)
from netforge.ops.xp import allocate
from tests.ops.alloc import assert_batch_independent
from tests.ops.gradcheck import assert_gradient, top_weights


def _x(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_row_and_channel_sums():
    a, b = _x((2, 3, 4), 1), _x((2, 3, 4), 2)
    rows = np.empty((2, 3))
    row_sums(a, rows)
    np.testing.assert_allclose(rows, a.sum(axis=2))
    row_sums(a, rows, b)
    np.testing.assert_allclose(rows, (a * b).sum(axis=2))
    out = np.full(3, 10.0)
    channel_sums(a, out, b=b, accumulate=True)
    np.testing.assert_allclose(out, 10 + (a * b).sum(axis=(0, 2)))
    channel_sums(a, out, ws=allocate(channel_sum_workspace_shapes(a.shape, a.dtype)))
    np.testing.assert_allclose(out, a.sum(axis=(0, 2)))


def test_batch_norm_train_statistics_and_in_place():
    x = _x((4, 3, 5), 3) * 2 + 1
    y, x_norm = np.empty_like(x), np.empty_like(x)
    mean, var, inv_std = np.empty(3), np.empty(3), np.empty(3)
    batch_norm_forward_train(x, y, x_norm, mean, var, inv_std, eps=1e-3)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)))
    np.testing.assert_allclose(var, x.var(axis=(0, 2)))
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-3))
    np.testing.assert_array_equal(x_norm, y)
    in_place = x.copy()
    batch_norm_forward_train(in_place, in_place, None, mean, var, inv_std, eps=1e-3)
    np.testing.assert_allclose(in_place, y, rtol=1e-14)


def test_batch_norm_update_stats_single_value_skips_the_correction():
    mean_acc, var_acc, factor = np.array([1.0]), np.array([2.0]), np.array([3.0])
    batch_norm_update_stats(mean_acc, var_acc, factor, np.array([5.0]), np.array([4.0]),
                            fraction=0.5, count=1)  # m = 1: no m/(m-1)
    np.testing.assert_allclose([mean_acc[0], var_acc[0], factor[0]], [5.5, 5.0, 2.5])
    batch_norm_update_stats(mean_acc, var_acc, factor, np.array([1.0]), np.array([4.0]),
                            fraction=0.5, count=5)
    np.testing.assert_allclose([mean_acc[0], var_acc[0], factor[0]], [3.75, 7.5, 2.25])


def test_batch_norm_global_stats_zero_factor_without_warnings():
    mean, inv_std = np.empty(2), np.empty(2)
    with np.errstate(all="raise"):
        batch_norm_global_stats(np.array([4.0, 6.0]), np.array([8.0, 2.0]), np.array([0.0]),
                                mean, inv_std, eps=0.25)
    np.testing.assert_array_equal(mean, [0.0, 0.0])
    np.testing.assert_allclose(inv_std, [2.0, 2.0])
    batch_norm_global_stats(np.array([4.0, 6.0]), np.array([8.0, 2.0]), np.array([2.0]),
                            mean, inv_std, eps=0.25)
    np.testing.assert_allclose(mean, [2.0, 3.0])
    np.testing.assert_allclose(inv_std, 1 / np.sqrt([4.25, 1.25]))


def test_batch_norm_backward_train_in_place_gradcheck():
    x = _x((3, 2, 4), 4)
    y, x_norm = np.empty_like(x), np.empty_like(x)
    mean, var, inv_std = np.empty(2), np.empty(2), np.empty(2)

    def forward():
        batch_norm_forward_train(x, y, x_norm, mean, var, inv_std, eps=0.1)
        return y

    forward()
    dy = top_weights(x.shape)
    dx = dy.copy()
    batch_norm_backward_train(dx, x_norm, inv_std, dx,  # in place: dx is dy
                              ws=allocate(batch_norm_workspace_shapes(x.shape, x.dtype)))
    assert_gradient(dx, forward, x, dy, what="batch norm")


@pytest.mark.parametrize("normalize_variance", [True, False])
def test_mvn_in_place_gradcheck(normalize_variance):
    x = _x((4, 6), 5)
    y, sigma = np.empty_like(x), np.empty(4)

    def forward():
        mvn_forward(x, y, sigma, normalize_variance=normalize_variance, eps=0.5)
        return y

    forward()
    dy = top_weights(x.shape)
    dx = dy.copy()
    mvn_backward(dx, y, sigma, dx, normalize_variance=normalize_variance, eps=0.5)
    assert_gradient(dx, forward, x, dy, what="mvn")


def test_mvn_constant_row_has_finite_gradient():
    x = np.vstack([np.full(5, 3.0), _x(5, 6)])
    y, sigma = np.empty_like(x), np.empty(2)
    with np.errstate(all="raise"):
        mvn_forward(x, y, sigma, normalize_variance=True, eps=1e-9)
        dx = np.empty_like(x)
        mvn_backward(np.ones_like(x), y, sigma, dx, normalize_variance=True, eps=1e-9)
    np.testing.assert_array_equal(y[0], 0.0)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6])
@pytest.mark.parametrize("region", [ACROSS_CHANNELS, WITHIN_CHANNEL])
def test_lrn_float32_matches_float64(region, beta):
    """The special-cased powers keep float32 results within float32 rounding."""
    x64 = _x((2, 5, 3, 4), 7) * 3
    outs = []
    for dtype in (np.float64, np.float32):
        x = x64.astype(dtype)
        y, scale, inv_pow = (np.empty_like(x) for _ in range(3))
        lrn_forward(x, y, scale, inv_pow, size=3, alpha=0.7, beta=beta, k=2.0, region=region)
        dx = np.empty_like(x)
        lrn_backward(np.ones_like(x), x, scale, inv_pow, dx, size=3, alpha=0.7, beta=beta,
                     region=region)
        outs.append((y, dx))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=2e-5, atol=1e-5)


def test_lrn_window_wider_than_the_channels():
    # local_size 7 over 2 channels: every window covers all channels (zero padding beyond).
    x = _x((1, 2, 1, 1), 8)
    y, scale, inv_pow = (np.empty_like(x) for _ in range(3))
    lrn_forward(x, y, scale, inv_pow, size=7, alpha=1.0, beta=0.75, k=1.0,
                region=ACROSS_CHANNELS)
    np.testing.assert_allclose(scale, 1 + (x ** 2).sum() / 7)


# --------------------------------------------------------------------------- allocation


@pytest.mark.parametrize("op", ["batch-norm-train-in-place", "batch-norm-global", "scale-bias",
                                "mvn-in-place", "lrn-across", "lrn-within"])
def test_normalization_steps_do_not_allocate(op):
    def make_step(batch):
        shape = (batch, 16, 8, 8)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        dy = np.ones_like(x)
        x3, dy3 = x.reshape(batch, 16, 64), dy.reshape(batch, 16, 64)
        y, dx = np.empty_like(x3), np.empty_like(x3)
        vecs = [np.ones(16, np.float32) for _ in range(5)]
        factor = np.ones(1, np.float32)
        bn_ws = allocate(batch_norm_workspace_shapes(x3.shape, np.float32))
        sum_ws = allocate(channel_sum_workspace_shapes(x3.shape, np.float32))
        x2, dy2 = x.reshape(batch * 16, 64), dy.reshape(batch * 16, 64)
        sigma = np.empty(batch * 16, np.float32)
        mvn_ws = allocate(mvn_workspace_shapes(x2.shape, np.float32))
        lrn_ws = allocate(lrn_workspace_shapes(shape, np.float32))
        scale, inv_pow, y4, dx4 = (np.empty_like(x) for _ in range(4))
        mean, var, inv_std, acc_mean, acc_var = vecs

        def lrn(region):
            return lambda: (
                lrn_forward(x, y4, scale, inv_pow, size=5, alpha=1e-4, beta=0.75, k=1.0,
                            region=region, ws=lrn_ws),
                lrn_backward(dy, x, scale, inv_pow, dx4, size=5, alpha=1e-4, beta=0.75,
                             region=region, ws=lrn_ws))

        steps = {
            "batch-norm-train-in-place": lambda: (
                batch_norm_forward_train(x3, x3, y, mean, var, inv_std, eps=1e-5, ws=bn_ws),
                batch_norm_update_stats(acc_mean, acc_var, factor, mean, var, fraction=0.9,
                                        count=batch * 64, ws=bn_ws),
                batch_norm_backward_train(dy3, y, inv_std, dy3, ws=bn_ws)),
            "batch-norm-global": lambda: (
                batch_norm_global_stats(acc_mean, acc_var, factor, mean, inv_std, eps=1e-5,
                                        ws={"factor": np.empty(1, np.float32)}),
                batch_norm_forward_global(x3, y, mean, inv_std),
                batch_norm_backward_global(dy3, inv_std, dx)),
            "scale-bias": lambda: (
                scale_forward(x3, mean, y), bias_forward(y, var, y),
                channel_sums(dy3, acc_mean, accumulate=True, ws=sum_ws),
                channel_sums(dy3, acc_var, b=x3, accumulate=True, ws=sum_ws),
                scale_backward(dy3, mean, dx)),
            "mvn-in-place": lambda: (
                mvn_forward(x2, x2, sigma, normalize_variance=True, eps=1e-9, ws=mvn_ws),
                mvn_backward(dy2, x2, sigma, dy2, normalize_variance=True, eps=1e-9,
                             ws=mvn_ws)),
            "lrn-across": lrn(ACROSS_CHANNELS),
            "lrn-within": lrn(WITHIN_CHANNEL),
        }
        return steps[op]

    assert_batch_independent(make_step, batches=(16, 64))

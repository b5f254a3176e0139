"""Activation kernels: values, gradients, and Caffe's in-place idiom (y is x, dx is dy)."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops.neuron import (
    absval_backward,
    absval_forward,
    bnll_backward,
    bnll_forward,
    clip_backward,
    clip_forward,
    dropout_backward,
    dropout_forward,
    elu_backward,
    elu_forward,
    elu_workspace_shapes,
    exp_forward,
    log_backward,
    log_forward,
    power_backward,
    power_forward,
    prelu_backward,
    prelu_forward,
    prelu_workspace_shapes,
    relu_backward,
    relu_forward,
    relu_workspace_shapes,
    sigmoid_backward,
    sigmoid_forward,
    swish_backward,
    swish_forward,
    tanh_backward,
    tanh_forward,
    tmp_workspace_shapes,
)
from netforge.ops.xp import allocate
from tests.ops.alloc import assert_batch_independent
from tests.ops.gradcheck import assert_gradient, top_weights

SHAPE = (3, 4, 5)


def _x(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape)


# --------------------------------------------------------------------------- relu

SLOPES = [0.0, 0.1, 2.0, -0.5]


@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in-place"])
@pytest.mark.parametrize("slope", SLOPES)
def test_relu_forward(slope, in_place):
    x = _x()
    ref = np.where(x > 0, x, slope * x)
    ws = allocate(relu_workspace_shapes(x.shape, x.dtype, negative_slope=slope))
    y = x if in_place else np.empty_like(x)
    relu_forward(x, y, negative_slope=slope, ws=ws)
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("source", ["bottom", "top", "in-place"])
@pytest.mark.parametrize("slope", SLOPES)
def test_relu_backward(slope, source):
    if source != "bottom" and slope < 0:
        pytest.skip("the top data has the bottom's signs only for negative_slope >= 0")
    x = _x()
    x[0, 0, :2] = 0.0  # Caffe's rule: x == 0 takes the negative slope
    dy = top_weights(x.shape)
    ref = dy * np.where(x > 0, 1.0, slope)
    ws = allocate(relu_workspace_shapes(x.shape, x.dtype, negative_slope=slope))
    if source == "bottom":
        dx = np.empty_like(x)
        relu_backward(dy, x, dx, negative_slope=slope, ws=ws)
    else:
        y = np.empty_like(x)
        relu_forward(x, y, negative_slope=slope, ws=ws)
        dx = dy.copy() if source == "in-place" else np.empty_like(x)
        relu_backward(dx if source == "in-place" else dy, y, dx, negative_slope=slope, ws=ws)
    np.testing.assert_array_equal(dx, ref)


@pytest.mark.parametrize("slope", SLOPES)
def test_relu_gradcheck(slope):
    x = _x(1)
    y, dx = np.empty_like(x), np.empty_like(x)
    dy = top_weights(x.shape)
    relu_backward(dy, x, dx, negative_slope=slope)

    def forward():
        relu_forward(x, y, negative_slope=slope)
        return y

    assert_gradient(dx, forward, x, dy, skip=np.abs(x) < 1e-2, what="relu")


# --------------------------------------------------------------------------- sigmoid, tanh

SMOOTH = [
    ("sigmoid", sigmoid_forward, sigmoid_backward, lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", tanh_forward, tanh_backward, np.tanh),
]


@pytest.mark.parametrize("name, forward_op, backward_op, ref", SMOOTH, ids=["sigmoid", "tanh"])
def test_smooth_forward_in_place_and_without_overflow(name, forward_op, backward_op, ref):
    x = _x() * 3
    x.flat[:4] = [-1000.0, 1000.0, -88.8, 90.0]  # exp(-x) would overflow float32 / float64
    expected = ref(np.clip(x, -50, 50))
    with np.errstate(all="raise"):
        y = np.empty_like(x)
        forward_op(x, y)
        forward_op(x, x)  # in place
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in-place"])
@pytest.mark.parametrize("name, forward_op, backward_op, ref", SMOOTH, ids=["sigmoid", "tanh"])
def test_smooth_backward(name, forward_op, backward_op, ref, in_place):
    x = _x(2)
    y = np.empty_like(x)
    forward_op(x, y)
    dy = top_weights(x.shape)
    if in_place:  # dx is dy; the local derivative goes to the workspace
        dx = dy.copy()
        backward_op(dx, y, dx, ws=allocate(tmp_workspace_shapes(x.shape, x.dtype)))
    else:
        dx = np.empty_like(x)
        backward_op(dy, y, dx)

    def forward():
        forward_op(x, y)
        return y

    assert_gradient(dx, forward, x, dy, what=name)


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("mask_dtype", [np.float32, bool], ids=["float-mask", "bool-mask"])
@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_dropout_keeps_one_minus_ratio_scaled(ratio, mask_dtype):
    x = np.ones((200, 500), np.float32)
    y, mask = np.empty_like(x), np.empty(x.shape, mask_dtype)
    dropout_forward(x, y, mask, ratio, np.random.default_rng(7))
    kept = y != 0
    assert abs(kept.mean() - (1 - ratio)) < 0.01
    np.testing.assert_allclose(y[kept], 1 / (1 - ratio), rtol=1e-6)
    assert y.dtype == np.float32
    dy = np.full_like(x, 3.0)
    dx = np.empty_like(x)
    dropout_backward(dy, mask, ratio, dx)
    np.testing.assert_allclose(dx, 3 * y, rtol=1e-6)


def test_dropout_is_reproducible_in_place_and_mask_kinds_agree():
    x = _x(3, (40, 50)).astype(np.float32)
    outs = []
    for mask_dtype in (np.float32, np.float32, bool):
        y, mask = x.copy(), np.empty(x.shape, mask_dtype)
        dropout_forward(y, y, mask, 0.3, np.random.default_rng(11))  # in place
        dy = top_weights(x.shape).astype(np.float32)
        dropout_backward(dy, mask, 0.3, dy)  # in place
        outs.append((y, dy))
    for y, dy in outs[1:]:
        np.testing.assert_array_equal(y, outs[0][0])
        np.testing.assert_allclose(dy, outs[0][1], rtol=1e-6)


def test_dropout_gradcheck():
    x = _x(4)
    y, mask, dx = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    dy = top_weights(x.shape)

    def forward():  # the same seed each time: the same units dropped, a linear map
        dropout_forward(x, y, mask, 0.4, np.random.default_rng(5))
        return y

    forward()
    dropout_backward(dy, mask, 0.4, dx)
    assert_gradient(dx, forward, x, dy, what="dropout")


def test_dropout_ratio_zero_is_identity_and_one_is_rejected():
    x = _x()
    y, mask = np.empty_like(x), np.empty_like(x)
    dropout_forward(x, y, mask, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(y, x)
    with pytest.raises(ValueError, match="ratio"):
        dropout_forward(x, y, mask, 1.0, np.random.default_rng(0))


# --------------------------------------------------------------------------- allocation


@pytest.mark.parametrize("op", ["relu", "leaky-relu-in-place", "sigmoid-in-place",
                                "tanh", "dropout-in-place"])
def test_neuron_steps_do_not_allocate(op):
    def make_step(batch):
        x = np.random.default_rng(0).standard_normal((batch, 64, 8, 8)).astype(np.float32)
        dy = np.ones_like(x)
        plain = allocate(relu_workspace_shapes(x.shape))
        leaky = allocate(relu_workspace_shapes(x.shape, x.dtype, negative_slope=0.1))
        tmp = allocate(tmp_workspace_shapes(x.shape, x.dtype))
        y, dx = np.empty_like(x), np.empty_like(x)
        rng, mask = np.random.default_rng(0), np.empty_like(x)
        steps = {
            "relu": lambda: (relu_forward(x, y), relu_backward(dy, y, dx, ws=plain)),
            "leaky-relu-in-place": lambda: (
                relu_forward(x, x, negative_slope=0.1, ws=leaky),
                relu_backward(dy, x, dy, negative_slope=0.1, ws=leaky)),
            "sigmoid-in-place": lambda: (sigmoid_forward(x, x),
                                         sigmoid_backward(dy, x, dy, ws=tmp)),
            "tanh": lambda: (tanh_forward(x, y), tanh_backward(dy, y, dx)),
            "dropout-in-place": lambda: (dropout_forward(x, x, mask, 0.5, rng),
                                         dropout_backward(dy, mask, 0.5, dy)),
        }
        return steps[op]

    assert_batch_independent(make_step, batches=(16, 64))


# --------------------------------------------------------------------------- PReLU and friends


@pytest.mark.parametrize("channels", [3, 1], ids=["per-channel", "shared"])
def test_prelu_gradcheck_slopes_and_bottom(channels):
    x = _x(5, (2, channels, 6))
    x[np.abs(x) < 1e-2] = 0.5  # keep off the kink
    slope = np.linspace(-0.5, 0.7, channels)
    y, dx, dslope = np.empty_like(x), np.empty_like(x), np.zeros(channels)
    dy = top_weights(x.shape)
    prelu_backward(dy, x, slope, dx, dslope)

    def forward():
        prelu_forward(x, slope, y)
        return y

    assert_gradient(dx, forward, x, dy, what="prelu bottom")
    assert_gradient(dslope, forward, slope, dy, what="prelu slope")


def test_power_derivative_is_finite_where_the_base_is_zero():
    # Caffe computes power * y / x here, which is 0/0; the limit is 0 for power > 1.
    x = np.array([0.0, 1.0, -2.0])
    dx = np.empty_like(x)
    with np.errstate(all="raise"):
        power_backward(np.ones_like(x), x, dx, power=3.0, scale=2.0, shift=0.0)
    np.testing.assert_allclose(dx, [0.0, 24.0, 96.0])


@pytest.mark.parametrize("base", [0.0, -3.0])
def test_exp_and_log_reject_bases_without_a_logarithm(base):
    x = np.ones(3)
    with pytest.raises(ValueError, match="base"):
        exp_forward(x, x.copy(), base=base, scale=1.0, shift=0.0)
    with pytest.raises(ValueError, match="base"):
        log_forward(x, x.copy(), base=base, scale=1.0, shift=0.0)


def test_elu_backward_from_top_data_in_place():
    x = _x(6)
    x[np.abs(x) < 1e-2] = 0.3
    y, dx = np.empty_like(x), np.empty_like(x)
    elu_forward(x, y, alpha=0.4)
    dy = top_weights(x.shape)
    elu_backward(dy, x, y, dx, alpha=0.4)
    in_place = dy.copy()
    elu_backward(in_place, y, y, in_place, alpha=0.4)  # Caffe's in place: data holds y
    np.testing.assert_allclose(in_place, dx, rtol=1e-15)
    np.testing.assert_allclose(dx, dy * np.where(x > 0, 1, 0.4 * np.exp(x)), rtol=1e-12)


@pytest.mark.parametrize("op", ["prelu-in-place", "elu-in-place", "swish", "bnll-in-place",
                                "absval", "power", "log", "clip-in-place"])
def test_more_neuron_steps_do_not_allocate(op):
    def make_step(batch):
        x = np.random.default_rng(0).uniform(0.5, 2, (batch, 64, 8, 8)).astype(np.float32)
        x3 = x.reshape(batch, 64, 64)
        dy = np.ones_like(x)
        y, dx, sig = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        slope, dslope = np.full(64, 0.25, np.float32), np.zeros(64, np.float32)
        prelu_ws = allocate(prelu_workspace_shapes(x3.shape, x.dtype))
        elu_ws = allocate(elu_workspace_shapes(x.shape, x.dtype))
        tmp = allocate(tmp_workspace_shapes(x.shape, x.dtype))
        x_copy = x.copy()
        steps = {
            "prelu-in-place": lambda: (
                prelu_forward(x3, slope, x3, ws=prelu_ws),
                prelu_backward(dy.reshape(x3.shape), x_copy.reshape(x3.shape), slope,
                               dy.reshape(x3.shape), dslope, ws=prelu_ws)),
            "elu-in-place": lambda: (elu_forward(x, x, alpha=1.0, ws=elu_ws),
                                     elu_backward(dy, x, x, dy, alpha=1.0, ws=elu_ws)),
            "swish": lambda: (swish_forward(x, y, sig, beta=1.0),
                              swish_backward(dy, y, sig, dx, beta=1.0, ws=tmp)),
            "bnll-in-place": lambda: (bnll_forward(x, x, ws=tmp), bnll_backward(dy, x, dy, ws=tmp)),
            "absval": lambda: (absval_forward(x, y), absval_backward(dy, x, dx, ws=tmp)),
            "power": lambda: (power_forward(x, y, power=-0.75, scale=2.0, shift=1.0),
                              power_backward(dy, x, dx, power=-0.75, scale=2.0, shift=1.0,
                                             ws=tmp)),
            "log": lambda: (log_forward(x, y, base=10.0, scale=1.0, shift=1.0),
                            log_backward(dy, x, dx, base=10.0, scale=1.0, shift=1.0, ws=tmp)),
            "clip-in-place": lambda: (clip_forward(x, x, lo=0.6, hi=1.5),
                                      clip_backward(dy, x_copy, dy, lo=0.6, hi=1.5, ws=tmp)),
        }
        return steps[op]

    assert_batch_independent(make_step, batches=(16, 64))

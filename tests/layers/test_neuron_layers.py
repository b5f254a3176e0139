"""Neuron layers (PReLU, ELU, Swish, AbsVal, BNLL, Power, Exp, Log, Threshold, Clip): forward
against plain-numpy references written from Caffe's definitions, float64 gradient checks,
and in place against out of place."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from netforge.errors import ConfigError, GraphError, ShapeError
from netforge.inspect.gradient_check import build_single_layer, check_gradients, run_forward
from tests.layers.inputs import TableInputs

RNG = np.random.default_rng(4242)
_INPUTS = TableInputs(RNG)
distinct, normal, positive = _INPUTS.distinct, _INPUTS.normal, _INPUTS.positive


def f32(v):
    """A prototxt float as the layer sees it (proto floats are single precision)."""
    return float(np.float32(v))


def _channel(p, ndim):
    """A per-channel parameter (C,) shaped to broadcast over (N, C, ...)."""
    return np.asarray(p).reshape((1, -1) + (1,) * (ndim - 2)) if np.ndim(p) else p


def _prelu(x, a):
    return np.where(x > 0, x, _channel(a, x.ndim) * x)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


KINK0 = {"kink": 0.0, "kink_range": 1e-3}

# id, layer prototxt, bottoms, reference(bottoms, params) -> top, gradient options (None: no
# backward).
ROWS = [
    ("prelu", 'prelu_param { filler { type: "gaussian" } }', [distinct(2, 3, 4)],
     lambda b, p: _prelu(b[0], p[0]), KINK0),
    ("prelu_4d", 'prelu_param { filler { type: "uniform" min: -1 max: 1 } }',
     [distinct(2, 3, 2, 2)], lambda b, p: _prelu(b[0], p[0]), KINK0),
    ("prelu_shared", 'prelu_param { channel_shared: true filler { type: "constant" '
     "value: -0.5 } }", [distinct(2, 3, 4)], lambda b, p: _prelu(b[0], p[0]), KINK0),
    ("elu", "", [distinct(2, 3, 4)],
     lambda b, p: np.where(b[0] > 0, b[0], np.exp(b[0]) - 1), KINK0),
    ("elu_alpha", "elu_param { alpha: 0.3 }", [distinct(2, 3, 4)],
     lambda b, p: np.where(b[0] > 0, b[0], f32(0.3) * (np.exp(b[0]) - 1)), KINK0),
    ("swish", "", [normal(2, 3, 4)], lambda b, p: b[0] * _sigmoid(b[0]), {}),
    ("swish_beta", "swish_param { beta: 2.5 }", [normal(2, 3, 4)],
     lambda b, p: b[0] * _sigmoid(2.5 * b[0]), {}),
    ("absval", "", [distinct(2, 3, 4)], lambda b, p: np.abs(b[0]), KINK0),
    ("bnll", "", [normal(2, 3, 4) * 5], lambda b, p: np.logaddexp(0, b[0]), {}),
    ("power_default", "", [normal(2, 5)], lambda b, p: b[0], {}),
    ("power_square", "power_param { power: 2 scale: 0.5 shift: 1 }", [normal(2, 5)],
     lambda b, p: (1 + 0.5 * b[0]) ** 2, {}),
    ("power_cube_noshift", "power_param { power: 3 scale: -1.5 }", [normal(2, 5)],
     lambda b, p: (-1.5 * b[0]) ** 3, {}),
    ("power_fractional", "power_param { power: -0.75 scale: 2 shift: 0.25 }",
     [positive(2, 5)], lambda b, p: (0.25 + 2 * b[0]) ** -0.75, {}),
    ("power_sqrt", "power_param { power: 0.5 shift: 3 }", [normal(2, 5)],
     lambda b, p: np.sqrt(3 + b[0]), {}),
    ("power_zero", "power_param { power: 0 scale: 3 shift: 2 }", [normal(2, 5)],
     lambda b, p: np.ones_like(b[0]), {}),
    ("power_scale_zero", "power_param { power: 3 scale: 0 shift: 2 }", [normal(2, 5)],
     lambda b, p: np.full_like(b[0], 8.0), {}),
    ("exp", "", [normal(2, 5)], lambda b, p: np.exp(b[0]), {}),
    ("exp_base_scale_shift", "exp_param { base: 2 scale: 0.5 shift: 1.5 }", [normal(2, 5)],
     lambda b, p: 2.0 ** (1.5 + 0.5 * b[0]), {}),
    ("exp_e_shift", "exp_param { shift: -1 scale: 3 }", [normal(2, 5)],
     lambda b, p: np.exp(-1 + 3 * b[0]), {}),
    ("log", "", [positive(2, 5)], lambda b, p: np.log(b[0]), {}),
    ("log_base_scale_shift", "log_param { base: 10 scale: 2 shift: 0.5 }", [positive(2, 5)],
     lambda b, p: np.log10(0.5 + 2 * b[0]), {}),
    ("log_base2", "log_param { base: 2 scale: -1 shift: 3 }", [positive(2, 5)],
     lambda b, p: np.log2(3 - b[0]), {}),
    ("threshold", "threshold_param { threshold: 0.25 }", [distinct(2, 3, 4)],
     lambda b, p: (b[0] > f32(0.25)).astype(float), None),
    ("threshold_default", "", [distinct(2, 3, 4)],
     lambda b, p: (b[0] > 0).astype(float), None),
    ("clip", "clip_param { min: -0.5 max: 0.75 }", [distinct(2, 3, 4)],
     lambda b, p: np.clip(b[0], -0.5, 0.75), {}),
]

TYPES = {"prelu": "PReLU", "elu": "ELU", "swish": "Swish", "absval": "AbsVal", "bnll": "BNLL",
         "power": "Power", "exp": "Exp", "log": "Log", "threshold": "Threshold",
         "clip": "Clip"}


def _layer_text(row_id, params, top="t"):
    kind = TYPES[row_id.split("_")[0]]
    return f'name: "l" type: "{kind}" bottom: "b0" top: "{top}" {params}'


@pytest.mark.parametrize("row_id, params, bottoms, reference, grad", ROWS,
                         ids=[row[0] for row in ROWS])
def test_forward_and_gradient(row_id, params, bottoms, reference, grad):
    plan, step = build_single_layer(_layer_text(row_id, params), bottoms)
    run_forward(plan)
    want = reference(bottoms, [blob.data for blob in step.layer.blobs])
    np.testing.assert_allclose(step.tops[0].data, want, rtol=1e-10, atol=1e-12)
    if grad is None:
        assert not step.layer.has_backward
        assert not step.need_backward
        return
    mismatches = check_gradients(plan, step, **grad)
    assert not mismatches, mismatches[:5]


IN_PLACE = [row for row in ROWS if row[4] is not None and not row[0].startswith("prelu_4d")]


@pytest.mark.parametrize("row_id, params, bottoms, reference, grad", IN_PLACE,
                         ids=[row[0] for row in IN_PLACE])
def test_in_place_matches_out_of_place(row_id, params, bottoms, reference, grad):
    results = []
    for top in ("t", "b0"):
        plan, step = build_single_layer(_layer_text(row_id, params, top), bottoms)
        assert (step.tops[0] is step.bottoms[0]) == (top == "b0")
        run_forward(plan)
        y = step.tops[0].data.copy()
        step.tops[0].diff[...] = np.linspace(-1, 1, y.size).reshape(y.shape)
        for blob in step.layer.blobs:
            blob.diff[...] = 0
        step.layer.backward(step.tops, [True], step.bottoms)
        results.append((y, step.bottoms[0].diff.copy(),
                        [blob.diff.copy() for blob in step.layer.blobs]))
    (y, dx, dparams), (y_in, dx_in, dparams_in) = results
    np.testing.assert_allclose(y_in, y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx_in, dx, rtol=1e-12, atol=1e-14)
    for got, want in zip(dparams_in, dparams, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_prelu_blob_shapes_and_default_filler():
    _, step = build_single_layer(_layer_text("prelu", ""), [normal(2, 3, 4)])
    (slope,) = step.layer.blobs
    assert slope.shape == (3,)
    np.testing.assert_array_equal(slope.data, 0.25)
    _, step = build_single_layer(_layer_text("prelu", "prelu_param { channel_shared: true }"),
                                 [normal(2, 3, 4)])
    assert step.layer.blobs[0].shape == ()  # Caffe's channel-shared slope is a 0-D blob
    assert float(step.layer.blobs[0].data) == 0.25


def test_prelu_slope_gradient_accumulates():
    x = distinct(2, 3, 4)
    plan, step = build_single_layer(_layer_text("prelu", ""), [x])
    run_forward(plan)
    dy = normal(2, 3, 4)
    step.tops[0].diff[...] = dy
    step.layer.blobs[0].diff[...] = 1.0
    step.layer.backward(step.tops, [True], step.bottoms)
    want = 1.0 + (dy * np.minimum(x, 0)).sum(axis=(0, 2))
    np.testing.assert_allclose(step.layer.blobs[0].diff, want, rtol=1e-12)


def test_prelu_needs_a_channel_axis():
    with pytest.raises(ShapeError, match='PReLU "l"'):
        build_single_layer(_layer_text("prelu", ""), [normal(5)])


def test_bnll_and_swish_do_not_overflow_for_large_inputs():
    x = np.array([[-1000.0, -100.0, -40.0, 0.0, 40.0, 100.0, 1000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        plan, step = build_single_layer(_layer_text("bnll", ""), [x])
        run_forward(plan)
        np.testing.assert_allclose(step.tops[0].data, np.logaddexp(0, x), rtol=1e-14)
        assert not check_gradients(plan, step)  # sigmoid(x): 0 ... 1, no NaN
        plan, step = build_single_layer(_layer_text("swish", ""), [x])
        run_forward(plan)
        np.testing.assert_allclose(step.tops[0].data, [[-0.0, -100 * _sigmoid(-100.0),
                                                        -40 * _sigmoid(-40.0), 0.0,
                                                        40 * _sigmoid(40.0), 100.0, 1000.0]],
                                   rtol=1e-14, atol=1e-15)  # sigmoid's tanh form: abs. error


def test_elu_large_negative_saturates_at_minus_alpha():
    x = np.array([[-1000.0, -50.0, 3.0]])
    plan, step = build_single_layer(_layer_text("elu", "elu_param { alpha: 2 }"), [x])
    run_forward(plan)
    np.testing.assert_allclose(step.tops[0].data, [[-2.0, 2 * np.expm1(-50.0), 3.0]])


def test_threshold_in_place():
    x = distinct(2, 3, 4)
    plan, step = build_single_layer(_layer_text("threshold", "threshold_param "
                                                "{ threshold: -0.3 }", top="b0"), [x])
    run_forward(plan)
    np.testing.assert_array_equal(step.tops[0].data, (x > f32(-0.3)).astype(float))


@pytest.mark.parametrize("text, message", [
    ('type: "Exp" exp_param { base: -2 }', "base must be strictly positive"),
    ('type: "Exp" exp_param { base: 0 }', "base must be strictly positive"),
    ('type: "Log" log_param { base: 1 }', "base 1 has no logarithm"),
    ('type: "Log" log_param { base: -0.5 }', "base must be strictly positive"),
    ('type: "Clip" clip_param { min: 1 max: 0 }', "greater than max"),
])
def test_bad_parameters_are_config_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        build_single_layer(f'name: "l" bottom: "b0" top: "t" {text}', [normal(2, 3)])


@pytest.mark.parametrize("bounds", ["", "clip_param { min: 1 }", "clip_param { max: 1 }"])
def test_clip_without_both_bounds_is_a_config_error(bounds):
    with pytest.raises(ConfigError, match="needs both min and max"):
        build_single_layer(f'name: "l" type: "Clip" bottom: "b0" top: "t" {bounds}',
                           [normal(2, 3)])


def test_threshold_has_no_backward_and_lrn_refuses_in_place(caplog):
    caplog.set_level(logging.INFO)
    plan, step = build_single_layer(_layer_text("threshold", ""), [normal(2, 3)])
    with pytest.raises(NotImplementedError, match="no backward"):
        step.layer.backward(step.tops, [True], step.bottoms)
    with pytest.raises(GraphError, match="in place"):
        build_single_layer('name: "l" type: "LRN" bottom: "b0" top: "b0"',
                           [normal(1, 3, 2, 2)])

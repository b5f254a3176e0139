"""Normalisation layers (BatchNorm, Scale, Bias, MVN, LRN): forward against plain-numpy /
naive-loop references written from Caffe's definitions, float64 gradient checks, running
statistics, parameter specs and in-place runs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from netforge.errors import ConfigError, ShapeError
from netforge.inspect.gradient_check import build_single_layer, check_gradients, run_forward
from tests.layers.inputs import TableInputs
from tests.ops.gradcheck import assert_gradient

RNG = np.random.default_rng(9090)
_INPUTS = TableInputs(RNG)
normal, positive = _INPUTS.normal, _INPUTS.positive
EPS = float(np.float32(1e-5))  # BatchNorm's default eps as the float proto field holds it
MVN_EPS = float(np.float32(1e-9))


def f32(v):
    return float(np.float32(v))


# --------------------------------------------------------------------------- references


def _stat_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def bn_train_ref(x, eps=EPS):
    if x.ndim == 1:
        x = x[:, None]
        return bn_train_ref(x, eps)[:, 0]
    axes = _stat_axes(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)  # biased
    return (x - mean) / np.sqrt(var + eps)


def per_axis(p, x, axis):
    """A parameter covering x's axes axis..axis+p.ndim, shaped to broadcast over x."""
    p = np.asarray(p)
    return p.reshape((1,) * axis + p.shape + (1,) * (x.ndim - axis - p.ndim))


def mvn_ref(x, normalize_variance=True, across_channels=False, eps=MVN_EPS):
    axes = tuple(range(1 if across_channels else 2, x.ndim))
    y = x - x.mean(axis=axes, keepdims=True)
    if normalize_variance:
        y = y / (np.sqrt((y ** 2).mean(axis=axes, keepdims=True)) + eps)
    return y


def lrn_across_ref(x, n, alpha, beta, k):
    """Caffe's ACROSS_CHANNELS LRN with an explicit loop over the channel windows."""
    half = (n - 1) // 2
    y = np.empty_like(x)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - half), min(x.shape[1], c + half + 1)
        scale = k + alpha / n * (x[:, lo:hi] ** 2).sum(axis=1)
        y[:, c] = x[:, c] * scale ** -beta
    return y


def lrn_within_ref(x, n, alpha, beta):
    """Caffe's WITHIN_CHANNEL LRN: 1 + alpha * (AVE pool of x² over n×n with pad (n-1)/2,
    always divided by n², padding included), to the power -beta; one pixel at a time."""
    half = (n - 1) // 2
    _, _, h, w = x.shape
    y = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            window = x[:, :, max(0, i - half):i + half + 1, max(0, j - half):j + half + 1]
            scale = 1 + alpha * (window ** 2).sum(axis=(2, 3)) / (n * n)
            y[:, :, i, j] = x[:, :, i, j] * scale ** -beta
    return y


def _text(kind, params="", bottoms=("b0",), top="t"):
    bottom_text = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'name: "l" type: "{kind}" {bottom_text} top: "{top}" {params}'


# id, layer text, bottoms, reference(bottoms, params) -> top
ROWS = [
    ("batchnorm_train", _text("BatchNorm"), [normal(2, 3, 2, 2)],
     lambda b, p: bn_train_ref(b[0])),
    ("batchnorm_train_2d_eps", _text("BatchNorm", "batch_norm_param { eps: 0.01 }"),
     [normal(4, 3)], lambda b, p: bn_train_ref(b[0], f32(0.01))),
    ("batchnorm_train_1d", _text("BatchNorm"), [normal(5)], lambda b, p: bn_train_ref(b[0])),
    ("batchnorm_train_5d", _text("BatchNorm"), [normal(2, 2, 2, 1, 3)],
     lambda b, p: bn_train_ref(b[0])),
    ("scale", _text("Scale", 'scale_param { filler { type: "gaussian" } }'),
     [normal(2, 3, 2, 2)], lambda b, p: b[0] * per_axis(p[0], b[0], 1)),
    ("scale_bias", _text("Scale", 'scale_param { bias_term: true filler { type: "gaussian" } '
                         'bias_filler { type: "gaussian" } }'),
     [normal(2, 3, 4)], lambda b, p: b[0] * per_axis(p[0], b[0], 1) + per_axis(p[1], b[0], 1)),
    ("scale_axis0_all", _text("Scale", 'scale_param { axis: 0 num_axes: -1 '
                              'filler { type: "gaussian" } }'),
     [normal(2, 3, 4)], lambda b, p: b[0] * p[0]),
    ("scale_axis1_all", _text("Scale", 'scale_param { num_axes: -1 filler { type: "gaussian" } '
                              "bias_term: true bias_filler { type: \"gaussian\" } }"),
     [normal(2, 3, 4)], lambda b, p: b[0] * p[0][None] + p[1][None]),
    ("scale_scalar", _text("Scale", 'scale_param { num_axes: 0 filler { type: "gaussian" } '
                           "bias_term: true bias_filler { type: \"gaussian\" } }"),
     [normal(2, 3, 4)], lambda b, p: b[0] * p[0] + p[1]),
    ("scale_axis_neg", _text("Scale", 'scale_param { axis: -1 filler { type: "gaussian" } }'),
     [normal(2, 3, 4)], lambda b, p: b[0] * p[0]),
    ("scale_two_bottoms", _text("Scale", bottoms=("b0", "b1")), [normal(2, 3, 4), normal(3)],
     lambda b, p: b[0] * per_axis(b[1], b[0], 1)),
    ("scale_two_bottoms_axis0_bias",
     _text("Scale", 'scale_param { axis: 0 bias_term: true bias_filler { type: "gaussian" } }',
           bottoms=("b0", "b1")),
     [normal(2, 3, 4), normal(2, 3)],
     lambda b, p: b[0] * per_axis(b[1], b[0], 0) + per_axis(p[0], b[0], 0)),
    ("bias", _text("Bias", 'bias_param { filler { type: "gaussian" } }'), [normal(2, 3, 2, 2)],
     lambda b, p: b[0] + per_axis(p[0], b[0], 1)),
    ("bias_axis2_all", _text("Bias", 'bias_param { axis: 2 num_axes: -1 '
                             'filler { type: "gaussian" } }'),
     [normal(2, 3, 2, 2)], lambda b, p: b[0] + p[0]),
    ("bias_two_bottoms", _text("Bias", bottoms=("b0", "b1")), [normal(2, 3, 4), normal(3, 4)],
     lambda b, p: b[0] + per_axis(b[1], b[0], 1)),
    ("mvn", _text("MVN"), [normal(2, 3, 2, 3)], lambda b, p: mvn_ref(b[0])),
    ("mvn_mean_only", _text("MVN", "mvn_param { normalize_variance: false }"),
     [normal(2, 3, 2, 3)], lambda b, p: mvn_ref(b[0], normalize_variance=False)),
    ("mvn_across", _text("MVN", "mvn_param { across_channels: true }"), [normal(2, 3, 2, 2)],
     lambda b, p: mvn_ref(b[0], across_channels=True)),
    ("mvn_across_mean_only", _text("MVN", "mvn_param { across_channels: true "
                                   "normalize_variance: false }"),
     [normal(2, 3, 2, 2)], lambda b, p: mvn_ref(b[0], False, True)),
    ("mvn_big_eps", _text("MVN", "mvn_param { eps: 0.25 }"), [normal(2, 2, 3, 2)],
     lambda b, p: mvn_ref(b[0], eps=0.25)),
    ("mvn_2d", _text("MVN", "mvn_param { across_channels: true }"), [normal(3, 5)],
     lambda b, p: mvn_ref(b[0], across_channels=True)),
    ("lrn_across_5", _text("LRN"), [normal(2, 7, 2, 3)],
     lambda b, p: lrn_across_ref(b[0], 5, 1.0, 0.75, 1.0)),
    ("lrn_across_3", _text("LRN", "lrn_param { local_size: 3 alpha: 2 beta: 0.6 k: 1.5 }"),
     [normal(2, 4, 2, 3)], lambda b, p: lrn_across_ref(b[0], 3, 2.0, f32(0.6), 1.5)),
    ("lrn_across_5_zoo", _text("LRN", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }"),
     [normal(1, 6, 2, 2) * 30], lambda b, p: lrn_across_ref(b[0], 5, f32(1e-4), 0.75, 1.0)),
    ("lrn_across_beta_half", _text("LRN", "lrn_param { local_size: 3 beta: 0.5 k: 2 }"),
     [normal(1, 3, 2, 2)], lambda b, p: lrn_across_ref(b[0], 3, 1.0, 0.5, 2.0)),
    ("lrn_within_3", _text("LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 "
                           "alpha: 2 beta: 0.75 k: 7 }"),
     [normal(2, 2, 4, 5)], lambda b, p: lrn_within_ref(b[0], 3, 2.0, 0.75)),
    ("lrn_within_5", _text("LRN", "lrn_param { norm_region: WITHIN_CHANNEL beta: 1 }"),
     [normal(1, 2, 6, 4)], lambda b, p: lrn_within_ref(b[0], 5, 1.0, 1.0)),
    ("lrn_within_3_general_beta", _text("LRN", "lrn_param { norm_region: WITHIN_CHANNEL "
                                        "local_size: 3 alpha: 0.5 beta: 0.3 }"),
     [normal(1, 2, 3, 3)], lambda b, p: lrn_within_ref(b[0], 3, 0.5, f32(0.3))),
]


@pytest.mark.parametrize("text, bottoms, reference", [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_forward_and_gradient(text, bottoms, reference):
    plan, step = build_single_layer(text, bottoms)
    run_forward(plan)
    want = reference(bottoms, [blob.data for blob in step.layer.blobs])
    np.testing.assert_allclose(step.tops[0].data, want, rtol=1e-10, atol=1e-12)
    mismatches = check_gradients(plan, step)
    assert not mismatches, mismatches[:5]


# --------------------------------------------------------------------------- BatchNorm


def _bottom_gradient_check(plan, step):
    """Bottom gradient only (BatchNorm's statistics have no gradient, by Caffe's design)."""
    x = step.bottoms[0].data
    dy = RNG.standard_normal(step.tops[0].shape)
    run_forward(plan)
    step.tops[0].diff[...] = dy
    step.layer.backward(step.tops, [True], step.bottoms)

    def forward():
        run_forward(plan)
        return step.tops[0].data

    assert_gradient(step.bottoms[0].diff.copy(), forward, x, dy, what=step.layer.label)


def _set_statistics(step, mean_sum, var_sum, factor):
    for blob, value in zip(step.layer.blobs, (mean_sum, var_sum, [factor]), strict=True):
        blob.data[...] = value


def test_batchnorm_global_stats_uses_stored_statistics_over_the_factor():
    x = normal(2, 3, 2, 2)
    plan, step = build_single_layer(
        _text("BatchNorm", "batch_norm_param { use_global_stats: true }"), [x])
    mean_sum, var_sum = np.array([1.0, -2.0, 0.5]), np.array([3.0, 0.25, 7.0])
    _set_statistics(step, mean_sum, var_sum, 2.5)
    run_forward(plan)
    mean, var = mean_sum / 2.5, var_sum / 2.5
    want = (x - per_axis(mean, x, 1)) / np.sqrt(per_axis(var, x, 1) + EPS)
    np.testing.assert_allclose(step.tops[0].data, want, rtol=1e-12)
    # The stored statistics are read, never updated, with global stats.
    np.testing.assert_array_equal(step.layer.blobs[0].data, mean_sum)
    np.testing.assert_array_equal(step.layer.blobs[2].data, [2.5])
    _bottom_gradient_check(plan, step)


def test_batchnorm_zero_scale_factor_reads_as_zero_statistics():
    x = normal(2, 3, 2)
    plan, step = build_single_layer(_text("BatchNorm", "phase: TEST"), [x])
    _set_statistics(step, [5.0, 5.0, 5.0], [9.0, 9.0, 9.0], 0.0)
    run_forward(plan)
    np.testing.assert_allclose(step.tops[0].data, x / np.sqrt(EPS), rtol=1e-12)


def test_batchnorm_running_statistics_over_two_forwards():
    fraction = f32(0.9)
    x1, x2 = normal(3, 2, 2, 2), normal(3, 2, 2, 2) * 2 + 1
    plan, step = build_single_layer(
        _text("BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 }"), [x1])
    run_forward(plan)
    plan.blobs["b0"].data[...] = x2
    run_forward(plan)
    # Caffe's update, written out: s = s·λ + 1, Σμ = Σμ·λ + μ, Σσ² = Σσ²·λ + m/(m−1)·σ².
    factor, mean_sum, var_sum = 0.0, np.zeros(2), np.zeros(2)
    for x in (x1, x2):
        per_channel = x.transpose(1, 0, 2, 3).reshape(2, -1)
        m = per_channel.shape[1]
        factor = factor * fraction + 1
        mean_sum = mean_sum * fraction + per_channel.mean(axis=1)
        var_sum = var_sum * fraction + per_channel.var(axis=1) * m / (m - 1)
    assert factor == pytest.approx(1.9)
    np.testing.assert_allclose(step.layer.blobs[2].data, [factor], rtol=1e-12)
    np.testing.assert_allclose(step.layer.blobs[0].data, mean_sum, rtol=1e-12)
    np.testing.assert_allclose(step.layer.blobs[1].data, var_sum, rtol=1e-12)
    # A TEST-phase layer holding these accumulators normalises with their ratios.
    test_plan, test_step = build_single_layer(_text("BatchNorm", "phase: TEST"), [x1])
    _set_statistics(test_step, mean_sum, var_sum, factor)
    run_forward(test_plan)
    want = ((x1 - per_axis(mean_sum / factor, x1, 1))
            / np.sqrt(per_axis(var_sum / factor, x1, 1) + EPS))
    np.testing.assert_allclose(test_step.tops[0].data, want, rtol=1e-12)


def test_batchnorm_blobs_are_frozen_by_param_specs():
    plan, step = build_single_layer(_text("BatchNorm"), [normal(2, 3, 2)])
    assert [blob.shape for blob in step.layer.blobs] == [(3,), (3,), (1,)]
    assert all((blob.data == 0).all() for blob in step.layer.blobs)
    specs = step.layer.param.param
    assert [(s.lr_mult, s.decay_mult) for s in specs] == [(0.0, 0.0)] * 3
    mine = [p for p in plan.learnable if p.layer_name == "l"]
    assert len(mine) == 3 and all(p.lr_mult == 0 for p in mine)


def test_batchnorm_nonzero_lr_mult_is_overridden_with_a_warning(caplog):
    text = _text("BatchNorm", "param { lr_mult: 0 } param { lr_mult: 1 decay_mult: 1 }")
    with caplog.at_level(logging.WARNING, logger="netforge"):
        plan, step = build_single_layer(text, [normal(2, 3)])
    assert "cannot be learned" in caplog.text
    assert [s.lr_mult for s in step.layer.param.param] == [0.0, 0.0, 0.0]
    assert all(p.lr_mult == 0 for p in plan.learnable if p.layer_name == "l")


@pytest.mark.parametrize("phase, global_stats", [("TRAIN", False), ("TEST", True)])
def test_batchnorm_phase_decides_global_stats(phase, global_stats):
    _, step = build_single_layer(_text("BatchNorm"), [normal(2, 3)], phase=phase)
    assert step.layer.use_global_stats is global_stats


def test_batchnorm_backward_survives_a_top_overwritten_after_forward():
    # ResNet's BatchNorm -> Scale (in place) overwrites BatchNorm's top before backward.
    x = normal(2, 3, 2, 2)
    dy = normal(2, 3, 2, 2)
    diffs = []
    for clobber in (False, True):
        plan, step = build_single_layer(_text("BatchNorm"), [x])
        run_forward(plan)
        if clobber:
            step.tops[0].data[...] = 123.0
        step.tops[0].diff[...] = dy
        step.layer.backward(step.tops, [True], step.bottoms)
        diffs.append(step.bottoms[0].diff.copy())
    np.testing.assert_array_equal(diffs[0], diffs[1])


def test_batchnorm_channel_mismatch_on_reshape():
    plan, step = build_single_layer(_text("BatchNorm"), [normal(2, 3)])
    with pytest.raises(ShapeError, match='BatchNorm "l"'):
        step.layer.reshape([(2, 4)])


# --------------------------------------------------------------------------- in place


IN_PLACE = [
    ("batchnorm_train", _text("BatchNorm", top="b0"), [normal(2, 3, 2, 2)]),
    ("batchnorm_global", _text("BatchNorm", "phase: TEST", top="b0"), [normal(2, 3, 2)]),
    ("scale_bias", _text("Scale", 'scale_param { bias_term: true filler { type: "gaussian" } '
                         'bias_filler { type: "gaussian" } }', top="b0"), [normal(2, 3, 4)]),
    ("scale_two_bottoms", _text("Scale", bottoms=("b0", "b1"), top="b0"),
     [normal(2, 3, 4), normal(3)]),
    ("bias", _text("Bias", 'bias_param { filler { type: "gaussian" } }', top="b0"),
     [normal(2, 3, 4)]),
    ("bias_two_bottoms", _text("Bias", bottoms=("b0", "b1"), top="b0"),
     [normal(2, 3, 4), normal(3)]),
    ("mvn", _text("MVN", top="b0"), [normal(2, 3, 2, 2)]),
    ("mvn_mean_only", _text("MVN", "mvn_param { normalize_variance: false }", top="b0"),
     [normal(2, 3, 2, 2)]),
]


def _run_once(text, bottoms, dy):
    plan, step = build_single_layer(text, bottoms, seed=5)
    if step.layer.type == "BatchNorm" and step.layer.use_global_stats:
        _set_statistics(step, [0.5, -1.0, 2.0], [1.0, 2.0, 0.5], 1.5)
    run_forward(plan)
    y = step.tops[0].data.copy()
    step.tops[0].diff[...] = dy
    for blob in step.layer.blobs:
        blob.diff[...] = 0
    step.layer.backward(step.tops, [True] * len(step.bottoms), step.bottoms)
    return (y, [b.diff.copy() for b in step.bottoms], [b.diff.copy() for b in step.layer.blobs],
            step.tops[0] is step.bottoms[0])


@pytest.mark.parametrize("text, bottoms", [row[1:] for row in IN_PLACE],
                         ids=[row[0] for row in IN_PLACE])
def test_in_place_matches_out_of_place(text, bottoms):
    dy = RNG.standard_normal(bottoms[0].shape)
    y, dbottoms, dparams, aliased = _run_once(text.replace('top: "b0"', 'top: "t"'), bottoms, dy)
    y_in, dbottoms_in, dparams_in, aliased_in = _run_once(text, bottoms, dy)
    assert aliased_in and not aliased
    np.testing.assert_allclose(y_in, y, rtol=1e-12, atol=1e-14)
    for got, want in zip(dbottoms_in + dparams_in, dbottoms + dparams, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- Scale / Bias


def test_scale_blobs_and_default_fillers():
    _, step = build_single_layer(_text("Scale", "scale_param { bias_term: true }"),
                                 [normal(2, 3, 4)])
    scale, bias = step.layer.blobs
    assert scale.shape == (3,) and bias.shape == (3,)
    np.testing.assert_array_equal(scale.data, 1.0)
    np.testing.assert_array_equal(bias.data, 0.0)
    _, step = build_single_layer(_text("Scale", "scale_param { axis: 1 num_axes: 2 }"),
                                 [normal(2, 3, 4, 5)])
    assert [b.shape for b in step.layer.blobs] == [(3, 4)]
    _, step = build_single_layer(_text("Scale", "scale_param { bias_term: true }",
                                       bottoms=("b0", "b1")), [normal(2, 3, 4), normal(3, 4)])
    assert [b.shape for b in step.layer.blobs] == [(3, 4)]  # the bias only
    _, step = build_single_layer(_text("Bias"), [normal(2, 3, 4)])
    assert [b.shape for b in step.layer.blobs] == [(3,)]
    np.testing.assert_array_equal(step.layer.blobs[0].data, 0.0)


def test_learned_scale_and_bias_gradients_accumulate():
    x, dy = normal(2, 3, 4), normal(2, 3, 4)
    plan, step = build_single_layer(_text("Scale", "scale_param { bias_term: true }"), [x])
    run_forward(plan)
    for blob in step.layer.blobs:
        blob.diff[...] = 1.0
    step.tops[0].diff[...] = dy
    step.layer.backward(step.tops, [True], step.bottoms)
    np.testing.assert_allclose(step.layer.blobs[0].diff, 1 + (dy * x).sum(axis=(0, 2)))
    np.testing.assert_allclose(step.layer.blobs[1].diff, 1 + dy.sum(axis=(0, 2)))


@pytest.mark.parametrize("text, shapes, error, message", [
    (_text("Scale", "scale_param { axis: 1 num_axes: 3 }"), [(2, 3, 4)], ShapeError,
     "extends past"),
    (_text("Scale", "scale_param { num_axes: -2 }"), [(2, 3)], ConfigError, "num_axes"),
    (_text("Scale", "scale_param { axis: 3 }"), [(2, 3)], ConfigError, "out of range"),
    (_text("Scale", bottoms=("b0", "b1")), [(2, 3, 4), (4,)], ShapeError, "does not match"),
    (_text("Bias", "bias_param { axis: 0 }", bottoms=("b0", "b1")), [(2, 3), (3,)], ShapeError,
     "does not match"),
])
def test_scale_and_bias_shape_errors(text, shapes, error, message):
    with pytest.raises(error, match=message):
        build_single_layer(text, [np.zeros(s) for s in shapes])


# --------------------------------------------------------------------------- LRN


@pytest.mark.parametrize("text, error, message", [
    (_text("LRN", "lrn_param { local_size: 4 }"), ConfigError, "odd"),
    (_text("LRN"), ShapeError, "4-D"),
])
def test_lrn_errors(text, error, message):
    with pytest.raises(error, match=message):
        build_single_layer(text, [normal(2, 3)])


def test_lrn_backward_survives_a_top_overwritten_after_forward():
    x, dy = normal(2, 5, 3, 3), normal(2, 5, 3, 3)
    diffs = []
    for clobber in (False, True):
        plan, step = build_single_layer(_text("LRN"), [x])
        run_forward(plan)
        if clobber:
            step.tops[0].data[...] = -7.0
        step.tops[0].diff[...] = dy
        step.layer.backward(step.tops, [True], step.bottoms)
        diffs.append(step.bottoms[0].diff.copy())
    np.testing.assert_array_equal(diffs[0], diffs[1])

"""Deconvolution, STOCHASTIC pooling, SPP, Im2col and Crop layers: forward against the naive
loops of ``tests.ops.naive``, then a float64 central-difference gradient check."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.errors import ConfigError, ShapeError
from netforge.inspect.gradient_check import build_single_layer, check_gradients, run_forward
from netforge.ops.random import RandomStream, philox_key, stream_id
from tests.backends import ARRAY_MODULES, host, load
from tests.layers.inputs import TableInputs
from tests.ops import naive

RNG = np.random.default_rng(4242)
_INPUTS = TableInputs(RNG)
normal, distinct = _INPUTS.normal, _INPUTS.distinct
SEED = 1701  # build_single_layer keys the random streams with this (run_forward rewinds them)


def positive(*shape):
    """Distinct positive values, as STOCHASTIC pooling expects (after a ReLU)."""
    count = int(np.prod(shape))
    return (RNG.permutation(count).astype(np.float64) + 1.0).reshape(shape) / count


def _deconv(bottom, num_output, extra="", bias=True):
    fillers = 'weight_filler { type: "gaussian" }'
    if bias:
        fillers += ' bias_filler { type: "gaussian" }'
    else:
        fillers += " bias_term: false"
    return (f'name: "l" type: "Deconvolution" bottom: "{bottom}" top: "t" convolution_param '
            f"{{ num_output: {num_output} {extra} {fillers} }}")


def _stochastic_train_reference(x, kernel, stride):
    """The TRAIN reference, fed the draws the layer makes: one U[0, 1) per output, in order,
    the first draw of layer "l"'s Philox stream under build_single_layer's key (run_forward
    rewinds it)."""
    oh = naive.pool_size(x.shape[2], kernel[0], 0, stride[0])
    ow = naive.pool_size(x.shape[3], kernel[1], 0, stride[1])
    stream = RandomStream(philox_key(SEED), stream_id("l"))
    uniform = stream.random(out=np.empty((x.shape[0], x.shape[1], oh, ow)))
    return naive.stochastic_pool_train(x, kernel, stride, uniform)[0]


def _spp(height, method):
    return (f'name: "l" type: "SPP" bottom: "b0" top: "t" spp_param {{ pyramid_height: '
            f"{height} pool: {method} }}")


def _crop(axis=None, offsets=()):
    fields = "" if axis is None else f"axis: {axis} "
    fields += " ".join(f"offset: {o}" for o in offsets)
    return f'name: "l" type: "Crop" bottom: "b0" bottom: "b1" top: "t" crop_param {{ {fields} }}'


# Each row: id, layer prototxt, bottoms, reference(bottoms, params) -> list of tops,
# gradient-check options (None: forward only), phase.
ROWS = [
    ("deconv", _deconv("b0", 3, "kernel_size: 3"), [normal(2, 2, 3, 3)],
     lambda b, p: [naive.deconv2d(b[0], p[0], p[1])], {}, "TRAIN"),
    ("deconv_stride2_pad1", _deconv("b0", 2, "kernel_size: 4 stride: 2 pad: 1"),
     [normal(1, 3, 3, 4)],
     lambda b, p: [naive.deconv2d(b[0], p[0], p[1], (2, 2), (1, 1))], {}, "TRAIN"),
    ("deconv_group2", _deconv("b0", 6, "kernel_size: 2 stride: 2 group: 2"),
     [normal(2, 4, 2, 3)],
     lambda b, p: [naive.deconv2d(b[0], p[0], p[1], (2, 2), group=2)], {}, "TRAIN"),
    ("deconv_dilation_nobias", _deconv("b0", 2, "kernel_size: 3 dilation: 2 pad: 1", False),
     [normal(1, 2, 3, 3)],
     lambda b, p: [naive.deconv2d(b[0], p[0], None, pad=(1, 1), dilation=(2, 2))], {},
     "TRAIN"),
    ("deconv_rect_depthwise", _deconv(
        "b0", 3, "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 group: 3"),
     [normal(2, 3, 3, 3)],
     lambda b, p: [naive.deconv2d(b[0], p[0], p[1], (2, 1), (1, 0), group=3)], {}, "TRAIN"),
    ("deconv_1x1", _deconv("b0", 3, "kernel_size: 1"), [normal(2, 4, 3, 2)],
     lambda b, p: [naive.deconv2d(b[0], p[0], p[1])], {}, "TRAIN"),
    ("pool_stochastic_test", 'name: "l" type: "Pooling" bottom: "b0" top: "t" pooling_param '
     "{ pool: STOCHASTIC kernel_size: 3 stride: 2 }",
     [positive(2, 2, 6, 6)], lambda b, p: [naive.stochastic_pool_test(b[0], (3, 3), (2, 2))],
     {}, "TEST"),
    ("pool_stochastic_test_rect", 'name: "l" type: "Pooling" bottom: "b0" top: "t" '
     "pooling_param { pool: STOCHASTIC kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 }",
     [positive(1, 2, 5, 4)], lambda b, p: [naive.stochastic_pool_test(b[0], (2, 3), (2, 1))],
     {}, "TEST"),
    ("pool_stochastic_train", 'name: "l" type: "Pooling" bottom: "b0" top: "t" pooling_param '
     "{ pool: STOCHASTIC kernel_size: 3 stride: 2 }",
     [positive(2, 2, 7, 7)], lambda b, p: [_stochastic_train_reference(b[0], (3, 3), (2, 2))],
     {}, "TRAIN"),
    ("pool_stochastic_train_global", 'name: "l" type: "Pooling" bottom: "b0" top: "t" '
     "pooling_param { pool: STOCHASTIC global_pooling: true }",
     [positive(2, 3, 3, 4)], lambda b, p: [_stochastic_train_reference(b[0], (3, 4), (1, 1))],
     {}, "TRAIN"),
    *[(f"spp_{method.lower()}_h{height}", _spp(height, method), [xs],
       lambda b, p, h=height, m=method: [naive.spp(b[0], h, m)], {}, "TRAIN")
      for method, height, xs in [("MAX", 1, distinct(2, 2, 5, 4)), ("MAX", 2, distinct(2, 2, 5, 6)),
                                 ("MAX", 3, distinct(1, 2, 7, 8)), ("AVE", 1, normal(2, 2, 5, 4)),
                                 ("AVE", 2, normal(2, 2, 5, 6)), ("AVE", 3, normal(1, 2, 7, 8))]],
    ("spp_stochastic_test_h2", _spp(2, "STOCHASTIC"), [positive(2, 2, 4, 6)],
     lambda b, p: [np.concatenate([naive.stochastic_pool_test(b[0], (4, 6), (4, 6)).reshape(2, -1),
                                   naive.stochastic_pool_test(b[0], (2, 3), (2, 3)).reshape(2, -1)],
                                  axis=1)], {}, "TEST"),
    ("im2col", 'name: "l" type: "Im2col" bottom: "b0" top: "t" convolution_param '
     "{ kernel_size: 2 }", [normal(2, 2, 3, 4)],
     lambda b, p: [naive.im2col_images(b[0], (2, 2), (0, 0), (1, 1), (1, 1))], {}, "TRAIN"),
    ("im2col_pad_stride_dilation", 'name: "l" type: "Im2col" bottom: "b0" top: "t" '
     "convolution_param { kernel_h: 3 kernel_w: 2 pad: 1 stride: 2 dilation: 2 }",
     [normal(1, 3, 6, 5)],
     lambda b, p: [naive.im2col_images(b[0], (3, 2), (1, 1), (2, 2), (2, 2))], {}, "TRAIN"),
    ("crop_default_axis2_offset0", _crop(), [normal(2, 3, 5, 6), normal(1, 1, 3, 4)],
     lambda b, p: [b[0][:, :, 0:3, 0:4]], {"check_bottoms": [0]}, "TRAIN"),
    ("crop_axis1_one_offset", _crop(1, [1]), [normal(2, 4, 5, 6), normal(2, 2, 3, 4)],
     lambda b, p: [b[0][:, 1:3, 1:4, 1:5]], {"check_bottoms": [0]}, "TRAIN"),
    ("crop_axis2_per_axis", _crop(2, [2, 1]), [normal(1, 2, 6, 5), normal(1, 1, 3, 3)],
     lambda b, p: [b[0][:, :, 2:5, 1:4]], {"check_bottoms": [0]}, "TRAIN"),
    ("crop_axis3_negative_axis", _crop(-1, [3]), [normal(2, 2, 3, 7), normal(1, 1, 1, 2)],
     lambda b, p: [b[0][:, :, :, 3:5]], {"check_bottoms": [0]}, "TRAIN"),
    ("crop_axis1_per_axis", _crop(1, [0, 1, 2]), [normal(2, 3, 4, 5), normal(2, 2, 2, 2)],
     lambda b, p: [b[0][:, 0:2, 1:3, 2:4]], {"check_bottoms": [0]}, "TRAIN"),
]


@pytest.mark.parametrize("xp_name", ARRAY_MODULES)
@pytest.mark.parametrize("text, bottoms, reference, grad, phase",
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_layer_forward_and_gradient(text, bottoms, reference, grad, phase, xp_name):
    xp = load(xp_name)
    plan, step = build_single_layer(text, bottoms, phase=phase, seed=SEED, xp=xp)
    run_forward(plan, seed=SEED)
    expected = reference(bottoms, [host(blob.data) for blob in step.layer.blobs])
    for top, want in zip(step.tops, expected, strict=True):
        assert top.shape == tuple(np.shape(want))
        np.testing.assert_allclose(host(top.data), want, rtol=1e-10, atol=1e-12)
    if grad is not None and xp is np:  # gradients: float64 differences on the host
        mismatches = check_gradients(plan, step, seed=SEED, **grad)
        assert not mismatches, mismatches[:5]


def test_crop_gives_no_gradient_to_the_reference_and_zeroes_the_rest():
    x = normal(1, 1, 4, 4)
    plan, step = build_single_layer(_crop(2, [1, 2]), [x, normal(1, 1, 2, 2)])
    run_forward(plan)
    assert step.propagate_down == [True, False]
    step.tops[0].diff[...] = 1.0
    step.bottoms[0].diff[...] = np.nan
    step.layer.backward(step.tops, step.propagate_down, step.bottoms)
    expected = np.zeros((4, 4))
    expected[1:3, 2:4] = 1.0
    np.testing.assert_array_equal(step.bottoms[0].diff[0, 0], expected)


def test_stochastic_train_samples_in_proportion_to_value():
    """Every output is one of its window's pixels, chosen about as often as its share of the
    window sum (4000 windows of the same values; loose 4-sigma bounds)."""
    window = np.array([[1.0, 2.0], [3.0, 4.0]])
    x = np.tile(window, (40, 100, 1, 1))
    plan, step = build_single_layer('name: "l" type: "Pooling" bottom: "b0" top: "t" '
                                    "pooling_param { pool: STOCHASTIC kernel_size: 2 }", [x])
    step.layer.forward(step.bottoms, step.tops)  # the layer's own seeded generator
    y = step.tops[0].data.ravel()
    assert set(np.unique(y)) <= {1.0, 2.0, 3.0, 4.0}
    # The recorded sample index points at the sampled value.
    assert np.array_equal(window.ravel()[step.layer.sample.ravel()], y)
    share = window.ravel() / window.sum()
    counts = np.array([(y == v).sum() for v in window.ravel()])
    sigma = np.sqrt(y.size * share * (1 - share))
    assert np.all(np.abs(counts - y.size * share) < 4 * sigma), (counts, y.size * share)
    # A second forward draws afresh: the samples change.
    before = y.copy()
    step.layer.forward(step.bottoms, step.tops)
    assert not np.array_equal(before, step.tops[0].data.ravel())


def test_stochastic_train_stays_in_its_window_and_backward_routes_there():
    x = positive(2, 3, 7, 7)
    plan, step = build_single_layer('name: "l" type: "Pooling" bottom: "b0" top: "t" '
                                    "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }",
                                    [x])
    step.layer.forward(step.bottoms, step.tops)
    sample = step.layer.sample
    rows, cols = sample // 7, sample % 7
    i = np.arange(3)[:, None]
    j = np.arange(3)[None, :]
    assert np.all((rows >= 2 * i) & (rows < 2 * i + 3) & (cols >= 2 * j) & (cols < 2 * j + 3))
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(2, 3, -1),
                                                     sample.reshape(2, 3, -1), 2).reshape(
                                                         sample.shape), step.tops[0].data)
    step.tops[0].diff[...] = 1.0
    step.layer.backward(step.tops, [True], step.bottoms)
    routed = np.zeros_like(x).reshape(2, 3, -1)
    for n, c, k in np.ndindex(2, 3, 9):
        routed[n, c, sample.reshape(2, 3, -1)[n, c, k]] += 1.0
    np.testing.assert_array_equal(step.bottoms[0].diff, routed.reshape(x.shape))


def test_bilinear_deconvolution_upsamples_a_constant_to_a_constant_interior():
    """FCN's upsampling: factor 2, kernel 4, stride 2, pad 1, one group per channel, bilinear
    weights. Away from the border every output pixel gets weights summing to 1."""
    x = np.full((1, 3, 5, 5), 2.5)
    plan, step = build_single_layer(
        'name: "up" type: "Deconvolution" bottom: "b0" top: "t" param { lr_mult: 0 } '
        "convolution_param { num_output: 3 group: 3 kernel_size: 4 stride: 2 pad: 1 "
        'bias_term: false weight_filler { type: "bilinear" } }', [x])
    run_forward(plan)
    y = step.tops[0].data
    assert y.shape == (1, 3, 10, 10)
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], 2.5, rtol=1e-12)
    # The border rows see only part of the kernel (3/4 of it with pad 1).
    np.testing.assert_allclose(y[0, 0, 0, 1:-1], 2.5 * 0.75, rtol=1e-12)
    np.testing.assert_allclose(y, naive.deconv2d(x, step.layer.blobs[0].data, None, (2, 2),
                                                 (1, 1), group=3), rtol=1e-12)


def test_deconvolution_weight_layout_and_several_bottoms():
    x0, x1 = normal(1, 4, 2, 2), normal(2, 4, 3, 3)
    plan, step = build_single_layer(
        'name: "l" type: "Deconvolution" bottom: "b0" bottom: "b1" top: "t0" top: "t1" '
        "convolution_param { num_output: 6 group: 2 kernel_size: 3 stride: 2 "
        'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', [x0, x1])
    w, b = (blob.data for blob in step.layer.blobs)
    assert w.shape == (4, 3, 3, 3) and b.shape == (6,)
    run_forward(plan)
    for x, top in zip((x0, x1), step.tops, strict=True):
        np.testing.assert_allclose(top.data, naive.deconv2d(x, w, b, (2, 2), group=2),
                                   rtol=1e-10, atol=1e-12)
    assert not check_gradients(plan, step)


@pytest.mark.parametrize("text, bottoms, error, match", [
    (_deconv("b0", 3, "kernel_size: 2 group: 2"), [normal(1, 4, 3, 3)], ShapeError,
     "divisible by group"),
    (_deconv("b0", 2, "kernel_size: 1 pad: 1"), [normal(1, 2, 1, 1)], ShapeError,
     "empty output"),
    ('name: "l" type: "Deconvolution" bottom: "b0" top: "t" convolution_param '
     "{ num_output: 2 }", [normal(1, 2, 3, 3)], ConfigError, "kernel_size"),
    (_spp(0, "MAX"), [normal(1, 2, 4, 4)], ConfigError, "pyramid_height"),
    (_spp(3, "MAX"), [normal(1, 2, 5, 5)], ShapeError, "bins"),
    (_spp(2, "STOCHASTIC"), [positive(1, 2, 5, 5)], ShapeError, "STOCHASTIC"),
    (_crop(2, [3]), [normal(1, 2, 5, 5), normal(1, 2, 3, 3)], ShapeError, "does not fit"),
    (_crop(2, [1, 1, 1]), [normal(1, 2, 5, 5), normal(1, 2, 3, 3)], ShapeError, "offsets"),
    (_crop(1), [normal(1, 2, 5, 5), normal(1, 2, 3)], ShapeError, "number of axes"),
    ('name: "l" type: "Pooling" bottom: "b0" top: "t" pooling_param { pool: STOCHASTIC '
     "kernel_size: 3 pad: 1 }", [positive(1, 1, 4, 4)], ConfigError, "padding"),
    ('name: "l" type: "Im2col" bottom: "b0" top: "t" convolution_param { kernel_size: 5 }',
     [normal(1, 1, 3, 3)], ShapeError, "smaller than the kernel"),
])
def test_bad_configuration_names_the_layer(text, bottoms, error, match):
    with pytest.raises(error, match=match) as info:
        build_single_layer(text, bottoms)
    assert '"l"' in str(info.value)

"""Table-driven layer checks: for each row, forward against an independent reference and a
float64 central-difference gradient check through the layer's backward."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.inspect.gradient_check import build_single_layer, check_gradients, run_forward
from tests.backends import ARRAY_MODULES, host, load
from tests.layers import reference as ref
from tests.layers.inputs import TableInputs

RNG = np.random.default_rng(1701)
_INPUTS = TableInputs(RNG)
distinct, normal, labels = _INPUTS.distinct, _INPUTS.normal, _INPUTS.labels


def _params(step):
    return [host(blob.data) for blob in step.layer.blobs]


# Each row: id, layer prototxt, bottoms, reference(bottoms, params) -> list of tops,
# gradient-check options (None = no backward to check).
ROWS = [
    ("conv", 'name: "l" type: "Convolution" bottom: "b0" top: "t" convolution_param '
     '{ num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" } '
     'bias_filler { type: "gaussian" } }',
     [normal(2, 2, 5, 5)], lambda b, p: [ref.conv2d(b[0], p[0], p[1])], {}),
    ("conv_pad_stride_rect", 'name: "l" type: "Convolution" bottom: "b0" top: "t" '
     "convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 "
     'stride_w: 1 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
     [normal(1, 2, 6, 5)],
     lambda b, p: [ref.conv2d(b[0], p[0], p[1], stride=(2, 1), pad=(1, 0))], {}),
    ("conv_dilation_group_nobias", 'name: "l" type: "Convolution" bottom: "b0" top: "t" '
     "convolution_param { num_output: 4 kernel_size: 2 dilation: 2 group: 2 bias_term: false "
     'weight_filler { type: "gaussian" } }',
     [normal(2, 4, 6, 6)],
     lambda b, p: [ref.conv2d(b[0], p[0], None, dilation=(2, 2), group=2)], {}),
    ("conv_depthwise", 'name: "l" type: "Convolution" bottom: "b0" top: "t" '
     'convolution_param { num_output: 3 kernel_size: 3 pad: 1 group: 3 '
     'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
     [normal(2, 3, 4, 4)], lambda b, p: [ref.conv2d(b[0], p[0], p[1], pad=(1, 1), group=3)],
     {}),
    ("conv_1x1", 'name: "l" type: "Convolution" bottom: "b0" top: "t" '
     'convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" } '
     'bias_filler { type: "gaussian" } }',
     [normal(2, 4, 3, 3)], lambda b, p: [ref.conv2d(b[0], p[0], p[1])], {}),
    ("pool_max_ceil", 'name: "l" type: "Pooling" bottom: "b0" top: "t" pooling_param '
     "{ pool: MAX kernel_size: 3 stride: 2 }",
     [distinct(2, 2, 6, 6)], lambda b, p: [ref.pool2d(b[0], (3, 3), (2, 2), (0, 0), "MAX")], {}),
    ("pool_max_pad", 'name: "l" type: "Pooling" bottom: "b0" top: "t" pooling_param '
     "{ pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
     [distinct(1, 2, 5, 5)], lambda b, p: [ref.pool2d(b[0], (3, 3), (2, 2), (1, 1), "MAX")], {}),
    ("pool_ave_pad", 'name: "l" type: "Pooling" bottom: "b0" top: "t" pooling_param '
     "{ pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
     [normal(1, 2, 6, 6)], lambda b, p: [ref.pool2d(b[0], (3, 3), (2, 2), (1, 1), "AVE")], {}),
    ("pool_ave_floor", 'name: "l" type: "Pooling" bottom: "b0" top: "t" pooling_param '
     "{ pool: AVE kernel_size: 2 stride: 2 round_mode: FLOOR }",
     [normal(1, 2, 5, 5)],
     lambda b, p: [ref.pool2d(b[0], (2, 2), (2, 2), (0, 0), "AVE", ceil=False)], {}),
    ("pool_global", 'name: "l" type: "Pooling" bottom: "b0" top: "t" pooling_param '
     "{ pool: AVE global_pooling: true }",
     [normal(2, 3, 4, 5)], lambda b, p: [b[0].mean(axis=(2, 3), keepdims=True)], {}),
    ("inner_product", 'name: "l" type: "InnerProduct" bottom: "b0" top: "t" '
     'inner_product_param { num_output: 4 weight_filler { type: "gaussian" } '
     'bias_filler { type: "gaussian" } }',
     [normal(3, 2, 2, 2)], lambda b, p: [b[0].reshape(3, -1) @ p[0].T + p[1]], {}),
    ("inner_product_axis2_transpose", 'name: "l" type: "InnerProduct" bottom: "b0" top: "t" '
     'inner_product_param { num_output: 2 axis: 2 transpose: true '
     'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
     [normal(2, 3, 4)], lambda b, p: [b[0] @ p[0] + p[1]], {}),
    ("relu", 'name: "l" type: "ReLU" bottom: "b0" top: "t"',
     [distinct(2, 3, 4)], lambda b, p: [np.maximum(b[0], 0)], {"kink": 0.0, "kink_range": 1e-3}),
    ("relu_leaky", 'name: "l" type: "ReLU" bottom: "b0" top: "t" relu_param '
     "{ negative_slope: 0.1 }",
     [distinct(2, 3, 4)], lambda b, p: [np.where(b[0] > 0, b[0], float(np.float32(0.1)) * b[0])],
     {"kink": 0.0, "kink_range": 1e-3}),
    ("sigmoid", 'name: "l" type: "Sigmoid" bottom: "b0" top: "t"',
     [normal(2, 5)], lambda b, p: [1 / (1 + np.exp(-b[0]))], {}),
    ("tanh", 'name: "l" type: "TanH" bottom: "b0" top: "t"',
     [normal(2, 5)], lambda b, p: [np.tanh(b[0])], {}),
    ("dropout_test_identity", 'name: "l" type: "Dropout" bottom: "b0" top: "t" '
     "dropout_param { dropout_ratio: 0.3 } phase: TEST",
     [normal(4, 5)], lambda b, p: [b[0]], {}),
    ("softmax", 'name: "l" type: "Softmax" bottom: "b0" top: "t"',
     [normal(3, 4, 2)], lambda b, p: [ref.softmax(b[0], 1)], {}),
    ("softmax_loss", 'name: "l" type: "SoftmaxWithLoss" bottom: "b0" bottom: "b1" top: "t"',
     [normal(4, 5), labels(4, 5)], lambda b, p: [ref.softmax_loss(b[0], b[1])], {}),
    ("softmax_loss_spatial_ignore", 'name: "l" type: "SoftmaxWithLoss" bottom: "b0" '
     'bottom: "b1" top: "t" loss_param { ignore_label: 1 }',
     [normal(2, 3, 2, 2), labels(2, 3, 2, 2)],
     lambda b, p: [ref.softmax_loss(b[0], b[1], ignore_label=1)], {}),
    *[(f"softmax_loss_{mode.lower()}", 'name: "l" type: "SoftmaxWithLoss" bottom: "b0" '
       f'bottom: "b1" top: "t" loss_param {{ ignore_label: 0 normalization: {mode} }}',
       [normal(3, 4, 2), labels(3, 4, 2)],
       lambda b, p, m=mode: [ref.softmax_loss(b[0], b[1], 0, m)], {})
      for mode in ("FULL", "BATCH_SIZE", "NONE")],
    ("accuracy_top1", 'name: "l" type: "Accuracy" bottom: "b0" bottom: "b1" top: "t"',
     [distinct(20, 5), labels(20, 5)], lambda b, p: [ref.accuracy(b[0], b[1])], None),
    ("accuracy_top3_ignore", 'name: "l" type: "Accuracy" bottom: "b0" bottom: "b1" top: "t" '
     "accuracy_param { top_k: 3 ignore_label: 2 }",
     [distinct(20, 5), labels(20, 5)],
     lambda b, p: [ref.accuracy(b[0], b[1], 3, ignore_label=2)], None),
    ("flatten", 'name: "l" type: "Flatten" bottom: "b0" top: "t"',
     [normal(2, 3, 2, 2)], lambda b, p: [b[0].reshape(2, 12)], {}),
    ("concat", 'name: "l" type: "Concat" bottom: "b0" bottom: "b1" top: "t"',
     [normal(2, 3, 2), normal(2, 1, 2)], lambda b, p: [np.concatenate(b, axis=1)], {}),
    ("concat_axis0", 'name: "l" type: "Concat" bottom: "b0" bottom: "b1" top: "t" '
     "concat_param { axis: 0 }",
     [normal(1, 3), normal(2, 3)], lambda b, p: [np.concatenate(b, axis=0)], {}),
    ("eltwise_sum_coeff", 'name: "l" type: "Eltwise" bottom: "b0" bottom: "b1" top: "t" '
     "eltwise_param { operation: SUM coeff: 2 coeff: -0.5 }",
     [normal(2, 3), normal(2, 3)], lambda b, p: [2 * b[0] - 0.5 * b[1]], {}),
    ("eltwise_prod", 'name: "l" type: "Eltwise" bottom: "b0" bottom: "b1" bottom: "b2" '
     'top: "t" eltwise_param { operation: PROD }',
     [normal(2, 3), normal(2, 3), normal(2, 3)], lambda b, p: [b[0] * b[1] * b[2]], {}),
    ("eltwise_max", 'name: "l" type: "Eltwise" bottom: "b0" bottom: "b1" top: "t" '
     "eltwise_param { operation: MAX }",
     [distinct(2, 3), distinct(2, 3) + 0.003], lambda b, p: [np.maximum(b[0], b[1])], {}),
    ("split", 'name: "l" type: "Split" bottom: "b0" top: "t0" top: "t1"',
     [normal(2, 3)], lambda b, p: [b[0], b[0]], {}),
]


@pytest.mark.parametrize("xp_name", ARRAY_MODULES)
@pytest.mark.parametrize("text, bottoms, reference, grad",
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_layer_forward_and_gradient(text, bottoms, reference, grad, xp_name):
    xp = load(xp_name)
    plan, step = build_single_layer(text, bottoms, xp=xp)
    run_forward(plan)
    expected = reference(bottoms, _params(step))
    assert len(expected) == len(step.tops)
    for top, want in zip(step.tops, expected, strict=True):
        np.testing.assert_allclose(host(top.data), np.asarray(want).reshape(top.shape),
                                   rtol=1e-10, atol=1e-10)
    if grad is None or xp is not np:  # gradients: float64 differences on the host
        return
    mismatches = check_gradients(plan, step, **grad)
    assert not mismatches, mismatches[:5]


def test_dropout_train_scales_kept_units_and_checks_gradient():
    x = normal(50, 40) + 3.0  # no zeros in x, so a dropped unit is recognisable
    plan, step = build_single_layer('name: "l" type: "Dropout" bottom: "b0" top: "t" '
                                    "dropout_param { dropout_ratio: 0.25 }", [x])
    run_forward(plan)
    y = step.tops[0].data
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75)
    assert 0.70 < kept.mean() < 0.80
    assert not check_gradients(plan, step)


def test_dropout_in_place_train():
    x = normal(10, 10) + 3.0
    plan, step = build_single_layer('name: "l" type: "Dropout" bottom: "b0" top: "b0"', [x])
    run_forward(plan)
    y = step.tops[0].data
    assert step.tops[0] is step.bottoms[0]
    assert set(np.unique(np.isclose(y, 2 * x) | (y == 0))) == {True}

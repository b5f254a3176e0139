"""Loss kernels: SoftmaxWithLoss and Accuracy against Caffe's loops (tests/ops/naive.py);
the other losses' numerical traps (their values and gradients are checked layer by layer in
tests/layers/test_loss_layers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops import distance_losses as pair_ops
from netforge.ops import loss as ops
from netforge.ops.loss import (
    accuracy,
    loss_workspace_shapes,
    softmax_loss_backward,
    softmax_loss_forward,
)
from netforge.ops.xp import allocate
from tests.ops import naive
from tests.ops.alloc import assert_batch_independent
from tests.ops.gradcheck import assert_gradient

# id, scores shape, axis, label shape
SHAPES = [("(N,C)", (6, 5), 1, (6,)), ("(N,C,1,1)-labels", (4, 3), 1, (4, 1, 1, 1)),
          ("spatial", (2, 4, 3, 2), 1, (2, 3, 2)), ("axis2", (3, 2, 4), 2, (3, 2))]
MODES = ["FULL", "VALID", "BATCH_SIZE", "NONE"]
IGNORE = [None, 1, "all"]


def _data(shape, axis, label_shape, ignore, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2
    label = rng.integers(0, shape[axis], label_shape).astype(np.float64)
    label.flat[0] = 1  # at least one label is the ignored class when ignoring 1
    if ignore == "all":
        label[...] = 7
        ignore = 7
    return x, label, ignore


@pytest.mark.parametrize("ignore", IGNORE, ids=["no-ignore", "ignore-1", "all-ignored"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_softmax_loss_forward_matches_caffe(case, mode, ignore):
    _, shape, axis, label_shape = case
    x, label, ignore_label = _data(shape, axis, label_shape, ignore)
    prob = np.empty_like(x)
    loss = softmax_loss_forward(x, label, prob, axis=axis, ignore_label=ignore_label,
                                normalization=mode,
                                ws=allocate(loss_workspace_shapes(shape, axis, x.dtype)))
    ref_loss, ref_prob = naive.softmax_loss(x, label, axis, ignore_label, mode)
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(prob, ref_prob, rtol=1e-12)


@pytest.mark.parametrize("loss_weight", [1.0, 0.5])
@pytest.mark.parametrize("ignore", IGNORE, ids=["no-ignore", "ignore-1", "all-ignored"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_softmax_loss_backward_gradcheck(case, mode, ignore, loss_weight):
    _, shape, axis, label_shape = case
    x, label, ignore_label = _data(shape, axis, label_shape, ignore, seed=1)
    kwargs = {"axis": axis, "ignore_label": ignore_label, "normalization": mode}
    prob, dx = np.empty_like(x), np.full_like(x, np.nan)
    softmax_loss_forward(x, label, prob, **kwargs)
    softmax_loss_backward(prob, label, dx, loss_weight=loss_weight, **kwargs)
    if ignore == "all":
        np.testing.assert_array_equal(dx, 0.0)
        return

    def forward():
        return np.array(softmax_loss_forward(x, label, prob, **kwargs))

    assert_gradient(dx, forward, x, np.array(loss_weight), what="softmax loss")


def test_softmax_loss_clamps_at_flt_min_and_rejects_bad_labels():
    x = np.array([[0.0, -200.0]], np.float32)  # p(label 1) = e^-200 underflows in float32
    prob = np.empty_like(x)
    loss = softmax_loss_forward(x, np.array([1.0]), prob)
    assert loss == pytest.approx(-np.log(np.finfo(np.float32).tiny), rel=1e-6)
    with pytest.raises(ValueError, match="label 2"):
        softmax_loss_forward(x, np.array([2.0]), prob)
    with pytest.raises(ValueError, match="normalization"):
        softmax_loss_forward(x, np.array([0.0]), prob, normalization="MEAN")


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("ignore", [None, 2], ids=["no-ignore", "ignore-2"])
@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_accuracy_matches_caffe(case, top_k, ignore, ties):
    _, shape, axis, label_shape = case
    if top_k > shape[axis]:
        pytest.skip("top_k larger than the class count")
    rng = np.random.default_rng(5)
    # Ties: integer scores, so the label's score often equals others' (Caffe counts ties
    # against the label).
    x = rng.integers(0, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)
    label = rng.integers(0, shape[axis], label_shape).astype(np.float64)
    acc, per_class = accuracy(x, label, top_k=top_k, axis=axis, ignore_label=ignore,
                              ws=allocate(loss_workspace_shapes(shape, axis, x.dtype)))
    ref_acc, ref_per = naive.accuracy(x, label, top_k, axis, ignore)
    assert acc == pytest.approx(ref_acc, abs=1e-15)
    np.testing.assert_allclose(per_class, ref_per, atol=1e-15)


def test_accuracy_tie_rule_and_all_ignored():
    x = np.array([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0], [0.0, 3.0, 3.0]])
    label = np.array([0.0, 0.0, 2.0])
    # Row 0: class 1 ties the label -> not top-1, but top-2. Row 1: a clear win. Row 2:
    # class 1 ties the label -> not top-1.
    assert accuracy(x, label, top_k=1)[0] == pytest.approx(1 / 3)
    assert accuracy(x, label, top_k=2)[0] == pytest.approx(1.0)
    acc, per_class = accuracy(x, np.full(3, 9.0), ignore_label=9)
    assert acc == 0.0
    np.testing.assert_array_equal(per_class, 0.0)
    assert accuracy(x, label, per_class=False)[1] is None


def test_loss_step_does_not_allocate():
    def make_step(batch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, 10, 5, 5)).astype(np.float32)
        label = rng.integers(0, 10, (batch, 5, 5)).astype(np.float32)
        prob, dx = np.empty_like(x), np.empty_like(x)
        ws = allocate(loss_workspace_shapes(x.shape, 1, x.dtype))
        kwargs = {"axis": 1, "ignore_label": 3, "normalization": "VALID", "ws": ws}
        return lambda: (softmax_loss_forward(x, label, prob, **kwargs),
                        softmax_loss_backward(prob, label, dx, **kwargs),
                        accuracy(x, label, top_k=2, axis=1, ignore_label=3,
                                 per_class=False, ws=ws))

    assert_batch_independent(make_step, batches=(256, 1024))


# --------------------------------------------------------------------------- other losses


def test_sigmoid_cross_entropy_is_stable_for_huge_scores():
    x = np.array([[1000.0, -1000.0, 1000.0]], np.float32)
    t = np.array([[0.0, 1.0, 1.0]], np.float32)
    ws = allocate(ops.sigmoid_cross_entropy_workspace_shapes(x.shape, x.dtype))
    loss = ops.sigmoid_cross_entropy_forward(x, t, ws=ws)
    assert loss == pytest.approx(2000.0, rel=1e-6)  # two confidently wrong, one right
    dx = np.empty_like(x)
    ops.sigmoid_cross_entropy_backward(x, t, dx, loss_weight=2.0, ws=ws)
    np.testing.assert_allclose(dx, [[2.0, -2.0, 0.0]], atol=1e-6)


def test_sigmoid_cross_entropy_ignores_by_truncated_label():
    x = np.array([[0.3, -0.2, 0.5, 1.0]])
    t = np.array([[1.0, -1.0, -1.5, 0.0]])  # -1.5 truncates to -1, as Caffe's static_cast
    kept = ops.sigmoid_cross_entropy_forward(x[:, [0, 3]], t[:, [0, 3]], normalization="NONE")
    loss = ops.sigmoid_cross_entropy_forward(x, t, ignore_label=-1, normalization="NONE")
    assert loss == pytest.approx(kept, rel=1e-14)
    assert ops.sigmoid_cross_entropy_forward(x, t, ignore_label=-1, normalization="VALID") == (
        pytest.approx(kept / 2, rel=1e-14))


def test_multinomial_clips_probabilities_at_1e_minus_20():
    prob = np.array([[0.0, 1.0], [0.5, 0.5]])
    label = np.array([0.0, 1.0])
    loss = ops.multinomial_logistic_forward(prob, label)
    assert loss == pytest.approx((-np.log(1e-20) - np.log(0.5)) / 2, rel=1e-14)
    dx = np.full_like(prob, np.nan)
    ops.multinomial_logistic_backward(prob, label, dx, loss_weight=3.0)
    np.testing.assert_allclose(dx, [[-1.5 / 1e-20, 0.0], [0.0, -1.5 / 0.5]], rtol=1e-14)


def test_contrastive_gradient_is_caffes_formula_with_its_epsilon():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    b[4] = a[4]  # d = 0 for a dissimilar pair: Caffe's epsilon keeps the gradient finite
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    margin, n = 2.5, 5
    diff, dist_sq = np.empty_like(a), np.empty(5)
    ws = allocate(pair_ops.contrastive_workspace_shapes(5, a.dtype))
    pair_ops.contrastive_forward(a, b, y, diff, dist_sq, margin=margin, ws=ws)
    da, db = np.empty_like(a), np.empty_like(b)
    pair_ops.contrastive_backward(diff, dist_sq, y, da, db, margin=margin, loss_weight=0.5, ws=ws)
    for i in range(n):
        d = np.linalg.norm(a[i] - b[i])
        if y[i]:
            coef = 0.5 / n
        else:
            coef = -0.5 / n * (margin - d) / (d + 1e-4) if margin - d > 0 else 0.0
        np.testing.assert_allclose(da[i], coef * (a[i] - b[i]), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(db[i], -coef * (a[i] - b[i]), rtol=1e-12, atol=1e-15)
    assert np.isfinite(da).all()


def test_hinge_and_infogain_steps_do_not_allocate():
    def make_step(batch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, 10)).astype(np.float32)
        label = rng.integers(0, 10, batch).astype(np.float32)
        h = rng.uniform(0, 1, (10, 10)).astype(np.float32)
        margins, prob, dx = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        ws = allocate(ops.infogain_workspace_shapes(x.shape, 1, x.dtype))
        kwargs = {"axis": 1, "ignore_label": 3, "normalization": "VALID", "ws": ws}
        return lambda: (pair_ops.hinge_forward(x, label, margins, norm="L2", ws=ws),
                        pair_ops.hinge_backward(margins, label, dx, norm="L2", ws=ws),
                        ops.infogain_forward(x, label, h, prob, **kwargs),
                        ops.infogain_backward(prob, label, h, dx, **kwargs),
                        ops.multinomial_logistic_forward(prob, label, ws=ws))

    # Label-sized operands stay below numpy's 8192-element buffer cap at small batches.
    assert_batch_independent(make_step, batches=(8192, 32768))

"""Convolution kernels: forward against a naive loop, backward against central differences."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops import deconv, vision
from netforge.ops.vision import (
    col2im,
    conv_backward,
    conv_forward,
    conv_output_size,
    conv_workspace_shapes,
    im2col,
)
from netforge.ops.xp import allocate
from tests.ops import naive
from tests.ops.alloc import assert_batch_independent
from tests.ops.gradcheck import assert_gradient, top_weights


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# id, x shape, w shape, stride, pad, dilation, group, bias
CONV_CASES = [
    ("3x3", (2, 3, 6, 7), (4, 3, 3, 3), 1, 0, 1, 1, True),
    ("pad1", (2, 3, 5, 5), (4, 3, 3, 3), 1, 1, 1, 1, True),
    ("stride2-pad1", (2, 2, 7, 6), (3, 2, 3, 3), 2, 1, 1, 1, True),
    ("stride>kernel", (1, 2, 9, 9), (2, 2, 2, 2), 3, 0, 1, 1, True),
    ("dilation2", (2, 2, 9, 8), (3, 2, 3, 3), 1, 1, 2, 1, True),
    ("group2", (2, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2, True),
    ("depthwise", (2, 3, 6, 6), (3, 1, 3, 3), 1, 1, 1, 3, True),
    ("depthwise-x2", (1, 3, 5, 5), (6, 1, 3, 3), 2, 1, 1, 3, False),
    ("1x1", (2, 4, 5, 5), (3, 4, 1, 1), 1, 0, 1, 1, True),
    ("1x1-group2-big", (2, 4, 12, 12), (6, 2, 1, 1), 1, 0, 1, 2, True),
    ("1x1-stride2", (2, 3, 6, 6), (4, 3, 1, 1), 2, 0, 1, 1, True),
    ("non-square", (2, 3, 7, 9), (4, 3, 2, 4), (2, 1), (1, 2), 1, 1, False),
    ("wide", (2, 2, 5, 20), (3, 2, 3, 3), 1, 1, 1, 1, True),
    ("wide-mixed", (1, 2, 8, 40), (2, 2, 3, 2), (1, 2), (1, 0), (2, 1), 1, True),
    ("wide-group2-dil", (1, 4, 6, 22), (4, 2, 2, 3), 1, (0, 2), 2, 2, True),
]
IDS = [case[0] for case in CONV_CASES]


def _setup(xs, wsh, stride, pad, dilation, group, bias, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(wsh).astype(dtype)
    b = rng.standard_normal(wsh[0]).astype(dtype) if bias else None
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(v) for v in ((wsh[2], wsh[3]), stride,
                                                                  pad, dilation))
    oh = conv_output_size(xs[2], kh, ph, sh, dh)
    ow = conv_output_size(xs[3], kw, pw, sw, dw)
    y = np.empty((xs[0], wsh[0], oh, ow), dtype)
    geo = {"stride": stride, "pad": pad, "dilation": dilation, "group": group}
    ws = allocate(conv_workspace_shapes(xs, wsh, dtype=dtype, **geo))
    return x, w, b, y, geo, ws


@pytest.fixture(params=["nchw", "chwn"])
def layout(request, monkeypatch):
    """Force one column layout (the cost model would pick one per shape)."""
    monkeypatch.setattr(vision, "_RUN_COST", 0 if request.param == "nchw" else 10**9)
    return request.param


@pytest.mark.parametrize("case", CONV_CASES, ids=IDS)
def test_conv_forward_matches_naive(case, layout):
    _, xs, wsh, stride, pad, dilation, group, bias = case
    x, w, b, y, geo, ws = _setup(xs, wsh, stride, pad, dilation, group, bias)
    conv_forward(x, w, b, y, ws=ws, **geo)
    ref = naive.conv2d(x, w, b, _pair(stride), _pair(pad), _pair(dilation), group)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES, ids=IDS)
def test_conv_float32_forward(case):
    _, xs, wsh, stride, pad, dilation, group, bias = case
    x, w, b, y, geo, ws = _setup(xs, wsh, stride, pad, dilation, group, bias, np.float32)
    assert all(a.dtype == np.float32 for a in ws.values())
    conv_forward(x, w, b, y, ws=ws, **geo)
    ref = naive.conv2d(x.astype(np.float64), w.astype(np.float64),
                       None if b is None else b.astype(np.float64), _pair(stride), _pair(pad),
                       _pair(dilation), group)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CONV_CASES, ids=IDS)
def test_conv_backward_gradcheck(case, layout):
    _, xs, wsh, stride, pad, dilation, group, bias = case
    x, w, b, y, geo, ws = _setup(xs, wsh, stride, pad, dilation, group, bias)
    dy = top_weights(y.shape)
    dx, dw = np.empty_like(x), np.zeros_like(w)
    db = None if b is None else np.zeros_like(b)
    conv_forward(x, w, b, y, ws=ws, **geo)
    conv_backward(dy, x, w, dx=dx, dw=dw, db=db, ws=ws, **geo)

    def forward():
        conv_forward(x, w, b, y, ws=ws, **geo)
        return y

    assert_gradient(dx, forward, x, dy, what="dx")
    assert_gradient(dw, forward, w, dy, what="dw")
    if b is not None:
        assert_gradient(db, forward, b, dy, what="db")


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (1, 5, 8, 9, 12)],
                         ids=[IDS[i] for i in (1, 5, 8, 9, 12)])
def test_conv_param_gradients_accumulate_and_dx_is_optional(case):
    _, xs, wsh, stride, pad, dilation, group, bias = case
    x, w, b, y, geo, ws = _setup(xs, wsh, stride, pad, dilation, group, bias)
    dy = top_weights(y.shape)
    conv_forward(x, w, b, y, ws=ws, **geo)
    dx, dw1, db1 = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    conv_backward(dy, x, w, dx=dx, dw=dw1, db=db1, ws=ws, **geo)

    dw2, db2 = np.zeros_like(w), np.zeros_like(b)
    for _ in range(2):  # dx=None: only the parameter gradients, accumulated twice
        conv_backward(dy, x, w, dx=None, dw=dw2, db=db2, ws=ws, **geo)
    np.testing.assert_allclose(dw2, 2 * dw1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db2, 2 * db1, rtol=1e-12, atol=1e-12)

    dx_only = np.full_like(x, np.nan)  # assigned, not accumulated: stale values vanish
    conv_backward(dy, x, w, dx=dx_only, dw=None, db=None, ws=ws, **geo)
    np.testing.assert_allclose(dx_only, dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (1, 6, 8, 12)],
                         ids=[IDS[i] for i in (1, 6, 8, 12)])
def test_conv_in_chunks_of_images(case, layout, monkeypatch):
    """Large images are convolved a few images at a time: 5 images in chunks of 2, 2, 1."""
    _, xs, wsh, stride, pad, dilation, group, bias = case
    xs = (5, *xs[1:])
    x, w, b, y, geo, ws = _setup(xs, wsh, stride, pad, dilation, group, bias)
    cols_per_image = xs[1] * wsh[2] * wsh[3] * y.shape[2] * y.shape[3]
    monkeypatch.setattr(vision, "_COL_BUDGET", 2 * cols_per_image)
    assert vision._conv_geom(xs, wsh, stride, pad, dilation, group).nb == 2
    ws = allocate(conv_workspace_shapes(xs, wsh, dtype=x.dtype, **geo))
    conv_forward(x, w, b, y, ws=ws, **geo)
    ref = naive.conv2d(x, w, b, _pair(stride), _pair(pad), _pair(dilation), group)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    dy = top_weights(y.shape)
    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    conv_backward(dy, x, w, dx=dx, dw=dw, db=db, ws=ws, reuse_col=True, **geo)

    def forward():
        conv_forward(x, w, b, y, ws=ws, **geo)
        return y

    assert_gradient(dx, forward, x, dy, what="dx")
    assert_gradient(dw, forward, w, dy, what="dw")
    assert_gradient(db, forward, b, dy, what="db")


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (0, 6, 12)],
                         ids=[IDS[i] for i in (0, 6, 12)])
def test_conv_reuse_col_gives_the_same_gradients(case, layout):
    _, xs, wsh, stride, pad, dilation, group, bias = case
    x, w, b, y, geo, ws = _setup(xs, wsh, stride, pad, dilation, group, bias)
    dy = top_weights(y.shape)
    grads = []
    for reuse in (False, True):
        conv_forward(x, w, b, y, ws=ws, **geo)
        dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
        conv_backward(dy, x, w, dx=dx, dw=dw, db=db, ws=ws, reuse_col=reuse, **geo)
        grads.append((dx, dw, db))
    for a, c in zip(*grads, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "xs, wsh, stride, pad, group",
    [((64, 20, 12, 12), (50, 20, 5, 5), 1, 0, 1), ((16, 8, 16, 16), (8, 4, 3, 3), 1, 1, 2),
     ((16, 16, 14, 14), (8, 16, 1, 1), 1, 0, 1), ((8, 4, 8, 40), (4, 4, 3, 3), 2, 1, 1)],
    ids=["lenet-conv2", "pad-group", "1x1", "wide"],
)
def test_conv_step_does_not_allocate(xs, wsh, stride, pad, group):
    """The hot-path rule: with its workspace in place, forward + backward allocates nothing
    that grows with the data."""

    def make_step(batch):
        x, w, b, y, geo, ws = _setup((batch, *xs[1:]), wsh, stride, pad, 1, group, True,
                                     np.float32)
        dy = np.ones_like(y)
        dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)

        def step():
            conv_forward(x, w, b, y, ws=ws, **geo)
            conv_backward(dy, x, w, dx=dx, dw=dw, db=db, ws=ws, **geo)

        return step

    assert_batch_independent(make_step)


@pytest.mark.parametrize(
    "size, kernel, pad, stride, dilation, expected",
    [(28, 5, 0, 1, 1, 24), (12, 5, 0, 1, 1, 8), (7, 3, 1, 2, 1, 4), (9, 3, 1, 1, 2, 7),
     (5, 1, 0, 2, 1, 3), (6, 2, 0, 3, 1, 2), (224, 7, 3, 2, 1, 112)],
)
def test_conv_output_size(size, kernel, pad, stride, dilation, expected):
    assert conv_output_size(size, kernel, pad, stride, dilation) == expected


@pytest.mark.parametrize(
    "xs, kernel, pad, stride, dilation",
    [((2, 3, 5, 6), (3, 2), (1, 0), (1, 2), (1, 1)), ((1, 2, 7, 7), 3, 2, 2, 2),
     ((2, 1, 4, 20), 3, 1, 1, 1)],
)
def test_im2col_matches_definition_and_col2im_is_its_adjoint(xs, kernel, pad, stride,
                                                             dilation):
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = (_pair(v) for v in (kernel, pad, stride,
                                                                 dilation))
    n, c, h, w = xs
    oh, ow = conv_output_size(h, kh, ph, sh, dh), conv_output_size(w, kw, pw, sw, dw)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs)
    col = np.full((c * kh * kw, n * oh * ow), np.nan)
    im2col(x, col, kernel=kernel, pad=pad, stride=stride, dilation=dilation)
    col6 = col.reshape(c, kh, kw, n, oh, ow)
    for ci, i, j, ni, r, s in np.ndindex(col6.shape):
        hh, ww = r * sh - ph + i * dh, s * sw - pw + j * dw
        inside = 0 <= hh < h and 0 <= ww < w
        assert col6[ci, i, j, ni, r, s] == (x[ni, ci, hh, ww] if inside else 0.0)
    # <im2col(x), g> == <x, col2im(g)> for any g: col2im is the exact adjoint (scatter-add).
    g = rng.standard_normal(col.shape)
    back = np.full_like(x, np.nan)
    col2im(g, back, kernel=kernel, pad=pad, stride=stride, dilation=dilation)
    assert np.isclose(np.sum(col * g), np.sum(x * back), rtol=1e-12)


def test_conv_rejects_mismatched_groups_and_non_contiguous_outputs():
    x, w, b, y, geo, ws = _setup((1, 4, 5, 5), (2, 2, 3, 3), 1, 0, 1, 2, True)
    with pytest.raises(ValueError, match="group"):
        conv_workspace_shapes((1, 4, 5, 5), (2, 2, 3, 3), group=3)
    y_strided = np.empty((y.shape[0], y.shape[1], y.shape[2], 2 * y.shape[3]))[..., ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        conv_forward(x, w, b, y_strided, ws=ws, **geo)


# --------------------------------------------------------------------------- im2col layer form


@pytest.mark.parametrize(
    "xs, kernel, pad, stride, dilation",
    [((2, 3, 5, 6), (3, 2), (1, 0), (1, 2), (1, 1)), ((1, 2, 7, 7), (3, 3), (2, 2), (2, 2),
                                                        (2, 2)),
     ((2, 1, 4, 4), (2, 2), (0, 0), (2, 2), (1, 1))],
)
def test_im2col_images_matches_naive_and_col2im_images_is_its_adjoint(xs, kernel, pad, stride,
                                                                        dilation):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs)
    ref = naive.im2col_images(x, kernel, pad, stride, dilation)
    cols = np.full(ref.shape, np.nan)
    geo = {"kernel": kernel, "pad": pad, "stride": stride, "dilation": dilation}
    vision.im2col_images(x, cols, **geo)
    np.testing.assert_array_equal(cols, ref)
    g = rng.standard_normal(cols.shape)
    back = np.full_like(x, np.nan)
    vision.col2im_images(g, back, **geo)
    assert np.isclose(np.sum(cols * g), np.sum(x * back), rtol=1e-12)


# --------------------------------------------------------------------------- deconvolution

# id, x shape, w shape (C_in, C_out/group, kh, kw), stride, pad, dilation, group, bias
DECONV_CASES = [
    ("3x3", (2, 3, 4, 5), (3, 2, 3, 3), 1, 0, 1, 1, True),
    ("stride2-pad1", (2, 2, 3, 4), (2, 3, 4, 4), 2, 1, 1, 1, True),
    ("group2", (1, 4, 3, 3), (4, 3, 3, 3), 2, 0, 1, 2, True),
    ("depthwise-upsample", (2, 3, 3, 3), (3, 1, 4, 4), 2, 1, 1, 3, False),
    ("dilation2", (1, 2, 3, 3), (2, 2, 3, 3), 1, 1, 2, 1, True),
    ("1x1", (2, 4, 3, 3), (4, 3, 1, 1), 1, 0, 1, 1, True),
    ("1x1-stride2", (1, 2, 3, 3), (2, 2, 1, 1), 2, 0, 1, 1, False),
    ("non-square", (1, 2, 3, 4), (2, 2, 3, 2), (2, 1), (1, 0), (1, 2), 1, True),
]
DECONV_IDS = [case[0] for case in DECONV_CASES]


def _deconv_setup(xs, wsh, stride, pad, dilation, group, bias, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs)
    w = rng.standard_normal(wsh)
    b = rng.standard_normal(wsh[1] * group) if bias else None
    geo = {"stride": stride, "pad": pad, "dilation": dilation, "group": group}
    y = np.empty(deconv.deconv_output_shape(xs, wsh, **geo))
    ws = allocate(deconv.deconv_workspace_shapes(xs, wsh, dtype=np.float64, **geo))
    return x, w, b, y, geo, ws


@pytest.mark.parametrize("case", DECONV_CASES, ids=DECONV_IDS)
def test_deconv_forward_matches_naive_and_gradients_check(case, layout):
    _, xs, wsh, stride, pad, dilation, group, bias = case
    x, w, b, y, geo, ws = _deconv_setup(xs, wsh, stride, pad, dilation, group, bias)
    deconv.deconv_forward(x, w, b, y, ws=ws, **geo)
    ref = naive.deconv2d(x, w, b, _pair(stride), _pair(pad), _pair(dilation), group)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)

    dy = top_weights(y.shape)
    dx, dw = np.full_like(x, np.nan), np.zeros_like(w)
    db = None if b is None else np.zeros_like(b)
    deconv.deconv_backward(dy, x, w, dx=dx, dw=dw, db=db, ws=ws, **geo)

    def forward():
        deconv.deconv_forward(x, w, b, y, ws=ws, **geo)
        return y

    assert_gradient(dx, forward, x, dy, what="dx")
    assert_gradient(dw, forward, w, dy, what="dw")
    if b is not None:
        assert_gradient(db, forward, b, dy, what="db")


@pytest.mark.parametrize("case", [DECONV_CASES[i] for i in (1, 3)],
                         ids=[DECONV_IDS[i] for i in (1, 3)])
def test_deconv_in_chunks_and_weight_gradient_alone(case, monkeypatch):
    """Batch split into chunks (large outputs), and dw without dx (no columns to reuse)."""
    _, xs, wsh, stride, pad, dilation, group, bias = case
    xs = (3, *xs[1:])
    x, w, b, y, geo, ws = _deconv_setup(xs, wsh, stride, pad, dilation, group, bias)
    dy = top_weights(y.shape)
    whole = np.zeros_like(w)
    deconv.deconv_backward(dy, x, w, dx=np.empty_like(x), dw=whole, db=None, ws=ws, **geo)
    monkeypatch.setattr(vision, "_COL_BUDGET", y.shape[1] * wsh[2] * wsh[3] * xs[2] * xs[3])
    ws = allocate(deconv.deconv_workspace_shapes(xs, wsh, dtype=np.float64, **geo))
    deconv.deconv_forward(x, w, b, y, ws=ws, **geo)
    ref = naive.deconv2d(x, w, b, _pair(stride), _pair(pad), _pair(dilation), group)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    for with_dx in (True, False):
        dw = np.zeros_like(w)
        dx = np.empty_like(x) if with_dx else None
        deconv.deconv_backward(dy, x, w, dx=dx, dw=dw, db=None, ws=ws, **geo)
        np.testing.assert_allclose(dw, whole, rtol=1e-12, atol=1e-12)


def test_deconv_output_size():
    # FCN's 2x and 32x upsampling layers, and Caffe's formula with dilation.
    assert deconv.deconv_output_size(5, 4, 1, 2) == 10
    assert deconv.deconv_output_size(16, 64, 0, 32) == 544
    assert deconv.deconv_output_size(3, 3, 1, 1, dilation=2) == 5


# ------------------------------------------------- grouped, depthwise, 1x1: no per-group loops


class _NumpyCallCounter:
    """Counts calls of the numpy functions the kernels use (reached as ``xp.<name>``)."""

    NAMES = ("matmul", "add", "multiply", "copyto", "sum", "subtract")

    class _Counted:
        """Stands in for a numpy function; other attributes (``add.reduce``, which numpy's
        own ``sum`` uses) pass through uncounted."""

        def __init__(self, counter, name, original):
            self._counter, self._name, self._original = counter, name, original

        def __call__(self, *args, **kwargs):
            self._counter.counts[self._name] += 1
            return self._original(*args, **kwargs)

        def __getattr__(self, attr):
            return getattr(self._original, attr)

    def __init__(self, monkeypatch):
        self.counts = dict.fromkeys(self.NAMES, 0)
        for name in self.NAMES:
            monkeypatch.setattr(np, name, self._Counted(self, name, getattr(np, name)))

    def take(self) -> dict:
        counts, self.counts = self.counts, dict.fromkeys(self.NAMES, 0)
        return counts


@pytest.mark.parametrize("kernel, pad", [(3, 1), (1, 0)], ids=["3x3", "1x1"])
def test_grouped_and_depthwise_conv_make_as_many_numpy_calls_as_dense(kernel, pad,
                                                                      monkeypatch):
    """Forward, data gradient and weight gradient issue the same numpy calls whatever the
    group count (1, 4, or depthwise 32): groups are a batch axis of one matmul, never a
    Python loop. The depthwise results are checked against the naive loop too."""
    c = 32
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, c, 5, 5))
    dy = rng.standard_normal((2, c, 5, 5))
    calls = {}
    for group in (1, 4, 32):
        w = rng.standard_normal((c, c // group, kernel, kernel))
        b = rng.standard_normal(c)
        geo = {"stride": 1, "pad": pad, "dilation": 1, "group": group}
        ws = allocate(conv_workspace_shapes(x.shape, w.shape, dtype=np.float64, **geo))
        y, dx, dw, db = (np.empty_like(dy), np.empty_like(x), np.zeros_like(w),
                         np.zeros_like(b))
        counter = _NumpyCallCounter(monkeypatch)
        conv_forward(x, w, b, y, ws=ws, **geo)
        forward_calls = counter.take()
        conv_backward(dy, x, w, dx=dx, dw=None, db=None, ws=ws, **geo)
        dx_calls = counter.take()
        conv_backward(dy, x, w, dx=None, dw=dw, db=db, ws=ws, **geo)
        dw_calls = counter.take()
        monkeypatch.undo()
        calls[group] = (forward_calls, dx_calls, dw_calls)
        assert forward_calls["matmul"] == 1
    assert calls[1] == calls[4] == calls[32], calls
    np.testing.assert_allclose(y, naive.conv2d(x, w, b, pad=(pad, pad), group=32),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("group", [1, 2])
def test_1x1_conv_is_a_matrix_product_without_im2col(group, monkeypatch):
    """A 1x1 stride-1 convolution never unfolds: forward and data gradient are one batched
    matmul each, and so is the weight gradient when images have enough pixels."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 4, 12, 12))
    w = rng.standard_normal((6, 4 // group, 1, 1))
    geo = {"stride": 1, "pad": 0, "dilation": 1, "group": group}
    ws = allocate(conv_workspace_shapes(x.shape, w.shape, dtype=np.float64, **geo))

    def no_unfold(*args, **kwargs):
        raise AssertionError("a 1x1 convolution must not build a column matrix")

    monkeypatch.setattr(vision, "_unfold", no_unfold)
    monkeypatch.setattr(vision, "_fold", no_unfold)
    y = np.empty((2, 6, 12, 12))
    counter = _NumpyCallCounter(monkeypatch)
    conv_forward(x, w, None, y, ws=ws, **geo)
    assert counter.take()["matmul"] == 1
    dy = rng.standard_normal(y.shape)
    dx, dw = np.empty_like(x), np.zeros_like(w)
    conv_backward(dy, x, w, dx=dx, dw=dw, db=None, ws=ws, **geo)
    assert counter.take()["matmul"] == 2
    # The plain products, group by group.
    og, cg = 6 // group, 4 // group
    for g in range(group):
        wg = w[g * og:(g + 1) * og, :, 0, 0]
        xg = x[:, g * cg:(g + 1) * cg].reshape(2, cg, -1)
        dyg = dy[:, g * og:(g + 1) * og].reshape(2, og, -1)
        np.testing.assert_allclose(y[:, g * og:(g + 1) * og].reshape(2, og, -1), wg @ xg,
                                   rtol=1e-12)
        np.testing.assert_allclose(dx[:, g * cg:(g + 1) * cg].reshape(2, cg, -1),
                                   wg.T @ dyg, rtol=1e-12)
        np.testing.assert_allclose(dw[g * og:(g + 1) * og, :, 0, 0],
                                   sum(dyg[n] @ xg[n].T for n in range(2)), rtol=1e-12)

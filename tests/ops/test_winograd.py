"""Winograd F(2x2, 3x3) convolution (netforge.ops.winograd) against direct convolution by
naive loops in float64, over a table of shapes: padding 0-2, odd and even output sizes
(the last tile's overhang), one image or several chunks, with and without bias and a fused
epilogue; float32 within its tolerance. And that the convolution layer's dispatch takes the
path where the shape rule says, and its backward (im2col, columns rebuilt) stays right."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops import compiled, vision, winograd
from netforge.ops.fused import ChannelEpilogue
from netforge.ops.xp import allocate

pytestmark = pytest.mark.skipif(not compiled.available(), reason="numba is not installed")


def _direct(x, w, b, pad):
    """y[n, o, i, j] = b[o] + sum over c, r, q of w[o, c, r, q] x[n, c, i + r - p, j + q - p]."""
    n, c, h, width = x.shape
    xp = np.zeros((n, c, h + 2 * pad[0], width + 2 * pad[1]))
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + width] = x
    oh, ow = h + 2 * pad[0] - 2, width + 2 * pad[1] - 2
    y = np.zeros((n, w.shape[0], oh, ow))
    for r in range(3):
        for q in range(3):
            patch = xp[:, :, r:r + oh, q:q + ow]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, r, q])
    if b is not None:
        y += b[None, :, None, None]
    return y


CASES = {  # name: (x shape, output channels, pad)
    "pad1_even": ((2, 4, 8, 8), 3, (1, 1)),
    "pad0_odd_output": ((1, 3, 9, 7), 5, (0, 0)),
    "pad2_rect": ((3, 2, 5, 6), 4, (2, 1)),
    "tiny_1x1_output": ((2, 3, 3, 3), 2, (0, 0)),
    "pad_only_output": ((1, 2, 1, 1), 2, (1, 1)),
}


def _run(x, w, b, pad, epilogue=None, budget=None, monkeypatch=None):
    if budget is not None:
        monkeypatch.setattr(winograd, "_TILE_BUDGET", budget)
    ws = allocate(winograd.workspace_shapes(x.shape, w.shape, pad=pad, dtype=x.dtype))
    oh, ow = x.shape[2] + 2 * pad[0] - 2, x.shape[3] + 2 * pad[1] - 2
    y = np.full((x.shape[0], w.shape[0], oh, ow), np.nan, x.dtype)
    winograd.conv_forward(x, w, b, y, pad=pad, ws=ws, epilogue=epilogue)
    return y


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("name", list(CASES))
def test_float64_matches_direct_convolution(name, bias):
    shape, o, pad = CASES[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((o, shape[1], 3, 3))
    b = rng.standard_normal(o) if bias else None
    np.testing.assert_allclose(_run(x, w, b, pad), _direct(x, w, b, pad), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_float32_within_tolerance_of_float64_direct(name):
    shape, o, pad = CASES[name]
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((o, shape[1], 3, 3)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    want = _direct(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), pad)
    scale = np.abs(want).max()
    np.testing.assert_allclose(_run(x, w, b, pad), want, rtol=0, atol=2e-6 * scale)


def test_chunks_and_epilogue(monkeypatch):
    """A tile budget of one image per chunk, and a fused BatchNorm + ReLU after the bias."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 7, 6))
    w = rng.standard_normal((5, 4, 3, 3))
    b = rng.standard_normal(5)
    mean, inv_std = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    ep = ChannelEpilogue(mean=mean, inv_std=inv_std, slope=0.1)
    got = _run(x, w, b, (1, 1), ep, budget=16 * 4 * 12, monkeypatch=monkeypatch)
    v = (_direct(x, w, b, (1, 1)) - mean[:, None, None]) * inv_std[:, None, None]
    np.testing.assert_allclose(got, np.where(v > 0, v, 0.1 * v), rtol=1e-12, atol=1e-12)


def test_shape_rule():
    rule = {"stride": 1, "pad": 1, "dilation": 1, "group": 1}
    assert winograd.applies((1, 64, 56, 56), (64, 64, 3, 3), **rule)
    assert not winograd.applies((1, 512, 7, 7), (512, 512, 3, 3), **rule)  # 16 tiles
    assert not winograd.applies((1, 3, 224, 224), (64, 3, 3, 3), **rule)  # 3 channels
    assert not winograd.applies((1, 64, 56, 56), (64, 64, 3, 3), **{**rule, "stride": 2})
    assert not winograd.applies((1, 64, 56, 56), (64, 32, 3, 3), **{**rule, "group": 2})
    assert not winograd.applies((1, 64, 56, 56), (64, 64, 3, 3), **{**rule, "dilation": 2})
    assert not winograd.applies((1, 64, 56, 56), (64, 64, 5, 5), **rule)


@pytest.mark.parametrize("no_winograd", [False, True], ids=["winograd", "im2col"])
def test_conv_layer_kernels_forward_and_backward(no_winograd, monkeypatch):
    """vision.conv_forward/backward on a shape the rule gives to Winograd: forward against
    direct convolution, backward (columns rebuilt from x) against the im2col-only path."""
    if no_winograd:
        monkeypatch.setenv("NETFORGE_NO_WINOGRAD", "1")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 16, 10, 10))
    w = rng.standard_normal((16, 16, 3, 3))
    b = rng.standard_normal(16)
    ws = allocate(vision.conv_workspace_shapes(x.shape, w.shape, pad=1, dtype=x.dtype))
    assert ("wino_v" in ws) is not no_winograd
    y = np.empty((2, 16, 10, 10))
    vision.conv_forward(x, w, b, y, pad=1, ws=ws)
    np.testing.assert_allclose(y, _direct(x, w, b, (1, 1)), rtol=1e-12, atol=1e-11)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    vision.conv_backward(dy, x, w, dx=dx, dw=dw, db=db, pad=1, ws=ws, reuse_col=True)
    # Closed forms: dw[o, c, r, q] = sum dy[n, o] * x_padded[n, c, shifted]; db = sum dy.
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want_dw = np.stack([np.stack([np.einsum("nohw,nchw->oc", dy, xp[:, :, r:r + 10, q:q + 10])
                                  for q in range(3)], -1) for r in range(3)], -2)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-12)
    want_dx = np.zeros_like(xp)
    for r in range(3):
        for q in range(3):
            want_dx[:, :, r:r + 10, q:q + 10] += np.einsum("nohw,oc->nchw", dy, w[:, :, r, q])
    np.testing.assert_allclose(dx, want_dx[:, :, 1:-1, 1:-1], rtol=1e-11, atol=1e-10)

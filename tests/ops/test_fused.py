"""The per-channel epilogue (netforge.ops.fused): the reference path against a naive loop
of the layers' own formulas, and the compiled pass against the reference bit for bit (each
stage rounds as its layer does), on strided sources as a convolution hands them over."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from netforge.ops import compiled
from netforge.ops.fused import ChannelEpilogue, apply_epilogue

STAGES = ("bias", "norm", "scale", "shift", "relu")


def _naive(src, bias, ep):
    """One element at a time, in the layers' order: bias, BatchNorm, Scale, bias, ReLU."""
    y = np.empty(src.shape, src.dtype)
    n, c, s = src.shape
    for b, ch, i in itertools.product(range(n), range(c), range(s)):
        v = src[b, ch, i]
        if bias is not None:
            v = v + bias[ch]
        if ep.mean is not None:
            v = (v - ep.mean[ch]) * ep.inv_std[ch]
        if ep.scale is not None:
            v = v * ep.scale[ch]
        if ep.shift is not None:
            v = v + ep.shift[ch]
        if ep.slope is not None and not v > 0 and not np.isnan(v):
            v = v * ep.slope if ep.slope else v.dtype.type(0)
        y[b, ch, i] = v
    return y


def _case(rng, dtype, stages, slope=0.0, strided=False):
    n, c, s = 3, 4, 5
    if strided:  # an (O, N, L) GEMM product seen as (N, O, L), as conv_forward hands it
        src = rng.standard_normal((c, n, s)).astype(dtype).transpose(1, 0, 2)
    else:
        src = rng.standard_normal((n, c, s)).astype(dtype)
    src[0, 0, :3] = (np.nan, -np.inf, 0.0)

    def vec(lo=-1.0, hi=1.0):
        return rng.uniform(lo, hi, c).astype(dtype)

    bias = vec() if "bias" in stages else None
    ep = ChannelEpilogue(
        mean=vec() if "norm" in stages else None,
        inv_std=vec(0.5, 2.0) if "norm" in stages else None,
        scale=vec() if "scale" in stages else None,
        shift=vec() if "shift" in stages else None,
        slope=slope if "relu" in stages else None)
    return src, bias, ep


SUBSETS = [("bias", "relu"), ("relu",), ("norm", "scale", "shift", "relu"),
           ("bias", "norm", "scale", "shift", "relu"), ("scale", "shift"), ("norm",), ()]


@pytest.mark.parametrize("slope", [0.0, 0.1, -0.5])
@pytest.mark.parametrize("stages", SUBSETS, ids=lambda s: "+".join(s) or "copy")
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_reference_matches_naive_loop(stages, slope, dtype, monkeypatch):
    monkeypatch.setenv("NETFORGE_NO_JIT", "1")
    src, bias, ep = _case(np.random.default_rng(1), dtype, stages, slope)
    y = np.zeros_like(src)
    apply_epilogue(src, y, bias, ep)
    np.testing.assert_array_equal(y, _naive(src, bias, ep))


@pytest.mark.skipif(not compiled.available(), reason="numba is not installed")
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("slope", [0.0, 0.25])
@pytest.mark.parametrize("stages", SUBSETS, ids=lambda s: "+".join(s) or "copy")
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_compiled_pass_is_bit_identical_to_reference(stages, slope, strided, in_place, dtype,
                                                     monkeypatch):
    if in_place and strided:
        pytest.skip("in place means src is y, which is contiguous")
    src, bias, ep = _case(np.random.default_rng(2), dtype, stages, slope, strided)
    results = []
    loaded = []
    real_load = compiled.load
    for jit in (False, True):
        a = src.copy() if in_place else src
        y = a if in_place else np.zeros(src.shape, dtype)
        if jit:
            monkeypatch.delenv("NETFORGE_NO_JIT", raising=False)
            monkeypatch.setattr(compiled, "load",
                                lambda name: loaded.append(name) or real_load(name))
        else:
            monkeypatch.setenv("NETFORGE_NO_JIT", "1")
        apply_epilogue(a, y, bias, ep)
        results.append(y.copy())
    assert "fused" in loaded, "the compiled epilogue did not run"
    np.testing.assert_array_equal(results[1], results[0])

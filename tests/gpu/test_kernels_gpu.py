"""netforge's own CuPy kernels against the numpy kernels (and naive references), in fp32,
fp16 and bf16 where the kernel supports them."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import netforge_pb2 as pb
from netforge.ops import loss as np_loss
from netforge.ops import normalization as np_norm
from netforge.ops import pooling as np_pool
from netforge.ops.xp import allocate
from netforge.train.mixed_precision import LossScaler
from tests.layers import reference as ref

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("kernel, stride, pad", [(3, 2, 0), (3, 2, 1), (2, 2, 0), (5, 1, 2)])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_kernels_match_numpy(cupy, kernel, stride, pad, method):
    x = RNG.permutation(2 * 3 * 9 * 9).reshape(2, 3, 9, 9).astype(np.float32)
    want = ref.pool2d(x.astype(np.float64), (kernel,) * 2, (stride,) * 2, (pad,) * 2, method)
    y = cupy.empty(want.shape, cupy.float32)
    dy = RNG.standard_normal(want.shape).astype(np.float32)
    dx, dx_np = cupy.empty_like(cupy.asarray(x)), np.empty_like(x)
    opts = {"kernel": kernel, "stride": stride, "pad": pad}
    if method == "MAX":
        arg = cupy.empty(want.shape, cupy.int64)
        np_pool.max_pool_forward(cupy.asarray(x), y, arg, ws={}, **opts)
        arg_np, y_np = np.empty(want.shape, np.int64), np.empty(want.shape, np.float32)
        ws = allocate(np_pool.max_pool_workspace_shapes(x.shape, want.shape, index_dtype=np.int64,
                                                        dtype=np.float32, **opts))
        np_pool.max_pool_forward(x, y_np, arg_np, ws=ws, **opts)
        np.testing.assert_array_equal(cupy.asnumpy(arg), arg_np)
        np_pool.max_pool_backward(cupy.asarray(dy), arg, dx, ws={}, **opts)
        np_pool.max_pool_backward(dy, arg_np, dx_np, ws=ws, **opts)
    else:
        np_pool.ave_pool_forward(cupy.asarray(x), y, ws={}, **opts)
        ws = allocate(np_pool.ave_pool_workspace_shapes(x.shape, want.shape, dtype=np.float32,
                                                        **opts))
        np_pool.ave_pool_backward(cupy.asarray(dy), dx, ws={}, **opts)
        np_pool.ave_pool_backward(dy, dx_np, ws=ws, **opts)
    np.testing.assert_allclose(cupy.asnumpy(y), want, rtol=1e-6)
    np.testing.assert_allclose(cupy.asnumpy(dx), dx_np, rtol=1e-5, atol=1e-6)


def test_lrn_across_channels_matches_numpy(cupy):
    x = RNG.standard_normal((2, 7, 4, 5)).astype(np.float64)
    opts = {"size": 5, "alpha": 1e-2, "beta": 0.75}
    outs_np = [np.empty_like(x) for _ in range(3)]
    np_norm.lrn_forward(x, *outs_np, k=2.0, region=np_norm.ACROSS_CHANNELS, **opts)
    xg = cupy.asarray(x)
    outs = [cupy.empty_like(xg) for _ in range(3)]
    np_norm.lrn_forward(xg, *outs, k=2.0, region=np_norm.ACROSS_CHANNELS, **opts)
    for g, w in zip(outs, outs_np, strict=True):
        np.testing.assert_allclose(cupy.asnumpy(g), w, rtol=1e-12)
    dy = RNG.standard_normal(x.shape)
    dx_np = np.empty_like(x)
    np_norm.lrn_backward(dy, x, outs_np[1], outs_np[2], dx_np, region=np_norm.ACROSS_CHANNELS,
                         **opts)
    dx = cupy.empty_like(xg)
    np_norm.lrn_backward(cupy.asarray(dy), xg, outs[1], outs[2], dx,
                         region=np_norm.ACROSS_CHANNELS, **opts)
    np.testing.assert_allclose(cupy.asnumpy(dx), dx_np, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_loss_kernel_keeps_the_loss_on_the_device(cupy, ignore):
    from netforge.ops.cuda import loss as cuda_loss

    x = RNG.standard_normal((6, 5, 3)).astype(np.float32)
    label = RNG.integers(0, 5, (6, 3)).astype(np.float32)
    prob_np = np.empty_like(x)
    want = np_loss.softmax_loss_forward(x, label, prob_np, ignore_label=ignore)
    dx_np = np.empty_like(x)
    np_loss.softmax_loss_backward(prob_np, label, dx_np, ignore_label=ignore, loss_weight=3.0)
    prob, loss, norm = (cupy.empty_like(cupy.asarray(x)), cupy.zeros((), cupy.float32),
                        cupy.zeros((), cupy.float32))
    nll, valid = cupy.empty((6, 3), cupy.float32), cupy.empty((6, 3), cupy.float32)
    cuda_loss.softmax_loss_forward(cupy.asarray(x), cupy.asarray(label), prob, loss, norm, nll,
                                   valid, ignore_label=ignore, normalization="VALID")
    assert abs(float(loss) - want) < 1e-5 * max(1, abs(want))
    np.testing.assert_allclose(cupy.asnumpy(prob), prob_np, rtol=1e-5)
    dx = cupy.empty_like(prob)
    cuda_loss.softmax_loss_backward(prob, cupy.asarray(label), dx, norm,
                                    cupy.full((), 3.0, cupy.float32), ignore_label=ignore)
    np.testing.assert_allclose(cupy.asnumpy(dx), dx_np, rtol=1e-5, atol=1e-7)


def test_device_loss_scaler_matches_the_numpy_scaler(cupy):
    param = pb.LossScaleParameter(init_scale=8.0, growth_interval=2, max_scale=32.0)
    cpu, gpu = LossScaler(param, np), LossScaler(param, cupy)
    for bad in [False, False, True, False, False, False, False, True]:
        grad = np.full(5, np.inf if bad else 1.0, np.float16)
        for scaler, xp in ((cpu, np), (gpu, cupy)):
            scaler.begin_step()
            scaler.unscale(xp.asarray(grad), xp.empty(5, np.float32))
            scaler.update()
        assert gpu.host_state() == cpu.host_state()


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_matches_the_update_rule(cupy, nesterov):
    from netforge.ops.cuda import optimizers

    w, g, h = (RNG.standard_normal(50).astype(np.float32) for _ in range(3))
    rate = cupy.full(1, 0.05, cupy.float32)
    data, diff, hist = (cupy.asarray(a) for a in (w, g, h))
    optimizers.sgd(data, diff, hist, rate, momentum=0.9, decay=5e-4, nesterov=nesterov)
    g2 = g + 5e-4 * w
    h_new = 0.9 * h + 0.05 * g2
    step = (1.9 * h_new - 0.9 * h) if nesterov else h_new
    np.testing.assert_allclose(cupy.asnumpy(data), w - step, rtol=1e-5, atol=1e-7)
    skip = cupy.ones(1, cupy.int32)
    before = data.copy()
    optimizers.sgd(data, diff, hist, rate, momentum=0.9, skip=skip, nesterov=nesterov)
    assert bool((data == before).all())


def test_bf16_pooling_runs_in_bf16(cupy):
    import ml_dtypes

    x = RNG.standard_normal((1, 2, 6, 6)).astype(ml_dtypes.bfloat16)
    y = cupy.empty((1, 2, 3, 3), dtype=ml_dtypes.bfloat16)
    np_pool.ave_pool_forward(cupy.asarray(x), y, kernel=2, stride=2, pad=0, ws={})
    want = x.astype(np.float32).reshape(1, 2, 3, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(cupy.asnumpy(y).astype(np.float32), want, rtol=1e-2, atol=1e-2)

"""netforge.ops.batch_split: the batch-parallel pool, and layers run in batch slices giving the
results of the unsplit layers."""

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.net import Net
from netforge.ops import batch_split as parallel
from netforge.ops import compiled, engine, pooling, vision
from netforge.ops.xp import allocate
from tests.ops import naive


@pytest.fixture
def slices():
    """Run the test with the pool on (2 slices, whatever NETFORGE_NUM_THREADS says), then
    restore the previous setting."""
    before = parallel.parts()

    def use(count):
        parallel.configure(count)

    yield use
    parallel.configure(before)


def test_split_covers_the_range_evenly():
    assert parallel.split(7, 2) == [(0, 3), (3, 7)]
    assert parallel.split(2, 4) == [(0, 1), (1, 2)]
    assert parallel.split(5, 1) == [(0, 5)]


def test_run_runs_every_task_once_and_reraises(slices):
    slices(2)
    done = []
    parallel.run([lambda k=k: done.append(k) for k in range(5)])
    assert sorted(done) == [0, 1, 2, 3, 4]

    def fail():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        parallel.run([lambda: None, fail])
    # a nested region runs inline instead of waiting for the busy pool
    nested = []
    parallel.run([lambda: parallel.run([lambda: nested.append(1), lambda: nested.append(2)]),
                  lambda: nested.append(3)])
    assert sorted(nested) == [1, 2, 3]


NET = """
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 5 dim: 2 dim: 9 dim: 9 } shape { dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 transpose: true
                              weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def _run(count):
    parallel.configure(count)
    param = config.parse_text(NET, pb.NetParameter(), "p.prototxt")
    param.force_backward = True
    net = Net(param, "train", dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    net.blobs["data"].data[...] = rng.standard_normal((5, 2, 9, 9))
    net.blobs["label"].data[...] = rng.integers(0, 3, 5)
    for _ in range(2):  # parameter gradients accumulate over both passes
        net.forward_backward()
    return net


def test_layers_in_batch_slices_match_the_unsplit_layers(slices):
    slices(1)
    whole = _run(1)
    split = _run(2)
    assert len(split.layer_dict["conv1"].workspaces[0]) == 2  # really split
    for name, blob in whole.blobs.items():
        np.testing.assert_allclose(split.blobs[name].data, blob.data, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(split.blobs[name].diff, blob.diff, rtol=1e-12, atol=1e-12)
    for name, params in whole.params.items():
        for mine, theirs in zip(split.params[name], params, strict=True):
            np.testing.assert_allclose(mine.diff, theirs.diff, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transpose", [False, True], ids=["plain", "transposed"])
def test_split_inner_product_stages_each_slice_in_its_own_bounded_blocks(slices, monkeypatch,
                                                                         transpose):
    """Each core's share of the weight gradient is staged in its own block of rows (no two
    cores write one stage), several blocks per share: dw still equals the product."""
    from netforge.ops import common, engine

    slices(2)
    monkeypatch.setattr(common, "LINEAR_STAGE", 6)  # blocks of 1-2 rows
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 5))
    w = rng.standard_normal((4, 5) if transpose else (5, 4))
    plan = engine.linear_plan(6, 5, np, w_shape=w.shape, transpose=transpose,
                              dtype=np.float64)
    stages = plan[2]
    assert len(stages) == 2
    assert stages[0]["dw"].base is None and stages[1]["dw"].base is None  # own memory
    assert stages[0]["dw"].shape[0] < (w.shape[0] if transpose else 3)  # several blocks
    dw = np.full_like(w, 0.25)
    ws = allocate(common.linear_workspace_shapes(w.shape, transpose=transpose,
                                                 dtype=np.float64))
    engine.linear_backward(plan, dy, x, w, dx=None, dw=dw, db=None, transpose=transpose, ws=ws)
    expected = 0.25 + (x.T @ dy if transpose else dy.T @ x)
    np.testing.assert_allclose(dw, expected, rtol=1e-12)


@pytest.mark.parametrize("geometry", [
    {"kernel": (3, 3), "stride": 1, "pad": 1},
    {"kernel": (1, 1), "stride": 1, "pad": 0},  # pointwise: the GEMM reads x itself
    {"kernel": (3, 2), "stride": 2, "pad": 0},
    {"kernel": (1, 1), "stride": 2, "pad": 0},
], ids=["3x3_pad1", "1x1", "3x2_s2", "1x1_s2"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("split", [True, False], ids=["split", "small"])
def test_one_image_splits_the_convolution_by_output_channels(slices, geometry, bias, split,
                                                              monkeypatch):
    """A batch of one cannot be split by images: its GEMM is split by output channels on
    the pool (written straight into y), or run on one core when small, against the naive
    convolution in float64."""
    slices(2)
    monkeypatch.setattr(engine, "SPLIT_MIN_MACS", 0 if split else 1 << 40)
    tasks = []
    real_run = parallel.run
    monkeypatch.setattr(parallel, "run", lambda t: tasks.append(len(t)) or real_run(t))
    rng = np.random.default_rng(3)
    kh, kw = geometry["kernel"]
    stride, pad = geometry["stride"], geometry["pad"]
    x = rng.standard_normal((1, 3, 9, 8))
    w = rng.standard_normal((5, 3, kh, kw))
    b = rng.standard_normal(5) if bias else None
    want = naive.conv2d(x, w, b, stride=(stride, stride), pad=(pad, pad))
    parts = engine.conv_plan(x.shape, w.shape, {"stride": stride, "pad": pad}, np.float64, np)
    calls = []
    real = engine.single_image_conv
    monkeypatch.setattr(engine, "single_image_conv",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    y = np.full(want.shape, np.nan)
    engine.conv_forward(parts, x, w, b, y, stride=stride, pad=pad)
    assert calls == [2], "the batch-1 path did not run"
    assert tasks == ([2] if split else []), "split in two only when large enough"
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    # and the same as the unsplit kernel (the reference path) in float32
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    b32 = None if b is None else b.astype(np.float32)
    ws = allocate(vision.conv_workspace_shapes(x.shape, w.shape, stride=stride, pad=pad,
                                               dtype=np.float32), np)
    ref = np.empty(want.shape, np.float32)
    vision.conv_forward(x32, w32, b32, ref, stride=stride, pad=pad, ws=ws)
    parts32 = engine.conv_plan(x.shape, w.shape, {"stride": stride, "pad": pad}, np.float32, np)
    y32 = np.empty_like(ref)
    engine.conv_forward(parts32, x32, w32, b32, y32, stride=stride, pad=pad)
    np.testing.assert_allclose(y32, ref, rtol=1e-5, atol=1e-5)


def test_a_batch_of_one_gives_the_unsplit_net(slices):
    """The whole net at batch 1, pool on vs off (float64)."""
    def forward(count):
        parallel.configure(count)
        param = config.parse_text(NET.replace("dim: 5", "dim: 1"), pb.NetParameter(),
                                  "p.prototxt")
        net = Net(param, "test", dtype=np.float64, seed=0)
        rng = np.random.default_rng(1)
        net.blobs["data"].data[...] = rng.standard_normal((1, 2, 9, 9))
        net.forward()
        return net

    whole, split = forward(1), forward(2)
    for name, blob in whole.blobs.items():
        np.testing.assert_allclose(split.blobs[name].data, blob.data, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transpose", [False, True], ids=["plain", "transposed"])
def test_one_row_splits_the_inner_product_by_outputs(slices, transpose, monkeypatch):
    slices(2)
    rng = np.random.default_rng(4)
    x, b = rng.standard_normal((1, 6)), rng.standard_normal(7)
    w = rng.standard_normal((6, 7) if transpose else (7, 6))
    want = x @ (w if transpose else w.T) + b
    plan = engine.linear_plan(1, 7, np)
    tasks = []
    real = parallel.run
    monkeypatch.setattr(parallel, "run", lambda t: tasks.append(len(t)) or real(t))
    y = np.full((1, 7), np.nan)
    engine.linear_forward(plan, x, w, b, y, transpose=transpose)
    assert tasks == [2], "one row must run as two output slices"
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not compiled.available(), reason="the channel split needs numba's kernels")
@pytest.mark.parametrize("want_argmax", [True, False], ids=["argmax", "values"])
def test_one_image_pools_its_channels_on_the_pool(slices, want_argmax, monkeypatch):
    slices(2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 5, 9, 8))
    want_y, want_arg = naive.max_pool(x, (3, 3), (2, 2), (1, 1))
    y = np.full(want_y.shape, np.nan)
    argmax = np.full(want_y.shape, -7, np.int32) if want_argmax else None
    spec = pooling.max_pool_workspace_shapes(x.shape, y.shape, kernel=3, stride=2, pad=1,
                                             index_dtype=np.int32, dtype=x.dtype)
    parts = engine.slice_plan(1, lambda n: spec, np)
    tasks = []
    real = parallel.run
    monkeypatch.setattr(parallel, "run", lambda t: tasks.append(len(t)) or real(t))
    engine.run_planes(parts, pooling.max_pool_forward, x, y, argmax, kernel=3, stride=2, pad=1)
    assert tasks == [2], "one image must pool as two channel slices"
    np.testing.assert_array_equal(y, want_y)
    if want_argmax:
        np.testing.assert_array_equal(argmax, want_arg)


def test_run_alone_holds_openblas_at_one_thread_and_gives_it_back(slices):
    slices(2)
    seen = []
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info()
                if p["internal_api"] == "openblas"]

    before = blas_threads()
    if not before:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    parallel.run_alone(lambda: seen.append(blas_threads()))
    assert seen == [[1] * len(before)]
    assert blas_threads() == before

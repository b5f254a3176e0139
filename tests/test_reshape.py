"""Dynamic reshape: pycaffe's ``net.blobs[name].reshape(...); net.reshape()`` and tops whose
size depends on the data (Filter), with Split aliasing, in-place layers and Reshape views
kept correct."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import Net, config
from netforge import netforge_pb2 as pb
from netforge.errors import ShapeError

RNG = np.random.default_rng(7)


def make_net(text: str, phase="train") -> Net:
    param = config.parse_text(text, pb.NetParameter(), "t.prototxt")
    return Net(param, phase=phase, dtype=np.float64, seed=3)


# data -> ip (ReLU in place) -> split: one branch reshaped and summed as the loss, the other
# an output; the loss reaches ip through the Reshape's shared diff.
NET = """
force_backward: true
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" }
                              bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "flat" type: "Reshape" bottom: "ip" top: "flat"
        reshape_param { shape { dim: -1 } } }
layer { name: "loss" type: "Reduction" bottom: "flat" top: "loss" loss_weight: 1
        reduction_param { operation: SUMSQ } }
layer { name: "scale" type: "Power" bottom: "ip" top: "out" power_param { scale: 2 } }
"""


def expected(net, x):
    w, b = (p.data for p in net.params["ip"])
    h = np.maximum(x @ w.T + b, 0)
    loss = (h**2).sum()
    dx = (2 * h * (h > 0)) @ w
    return h, loss, dx


def test_input_batch_change_propagates_through_the_net():
    net = make_net(NET)
    split_top = "ip_relu_0_split_0"  # the in-place ReLU's top feeds two consumers
    assert split_top in net.blobs
    for batch in (2, 5, 1, 5):
        net.blobs["data"].reshape(batch, 3)
        net.reshape()
        x = RNG.standard_normal((batch, 3))
        out = net.forward(data=x)
        h, loss, dx = expected(net, x)
        assert net.blobs["flat"].shape == (batch * 4,)
        np.testing.assert_allclose(out["out"], 2 * h, rtol=1e-12)
        assert net.loss() == pytest.approx(loss, rel=1e-12)
        # the split aliases the (reallocated) ip blob; the Reshape views the split's top
        assert np.shares_memory(net.blobs[split_top].data, net.blobs["ip"].data)
        assert np.shares_memory(net.blobs["flat"].data, net.blobs[split_top].data)
        assert np.shares_memory(net.blobs["flat"].diff, net.blobs[split_top].diff)
        net.backward()
        np.testing.assert_allclose(net.blobs["data"].diff, dx, rtol=1e-10)


def test_reshape_reallocates_only_changed_blobs():
    net = make_net(NET)
    before = {name: blob.data for name, blob in net.blobs.items()}
    net.reshape()  # nothing changed: same memory everywhere (views may be rebuilt)
    for name, arr in before.items():
        assert np.shares_memory(net.blobs[name].data, arr), name
    weights = net.params["ip"][0].data
    net.blobs["data"].reshape(4, 3)
    net.reshape()
    # The activations live in one arena buffer (graph/arena.py), laid out again as a whole
    # when one of them changes shape; the parameters, unchanged, stay where they were.
    activations = net.plan.arena.buffers["activations"]
    assert np.shares_memory(net.blobs["loss"].data, activations)
    assert not np.shares_memory(before["loss"], activations)
    assert not np.shares_memory(net.blobs["ip"].data, before["ip"])
    assert net.params["ip"][0].data is weights


def test_incompatible_input_shape_names_the_layer():
    net = make_net(NET)
    net.blobs["data"].reshape(2, 5)
    with pytest.raises(ShapeError, match='InnerProduct "ip"'):
        net.reshape()


def test_set_input_still_demands_the_planned_shape():
    net = make_net(NET)
    with pytest.raises(ShapeError, match="net.reshape"):
        net.forward(data=np.zeros((3, 3)))


FILTER_NET = """
force_backward: true
layer { name: "in" type: "Input" top: "data" top: "sel"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "filter" type: "Filter" bottom: "data" bottom: "sel" top: "kept" }
layer { name: "ip" type: "InnerProduct" bottom: "kept" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" }
                              bias_filler { type: "gaussian" } } }
layer { name: "loss" type: "Reduction" bottom: "ip" top: "loss" loss_weight: 1 }
"""


@pytest.mark.parametrize("selectors", [[[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1],
                                        [0, 0, 1, 1], [0, 0, 1, 1]]])
def test_filter_then_inner_product_follows_the_data(selectors):
    net = make_net(FILTER_NET)
    assert net.blobs["ip"].shape == (4, 2)  # planned for the whole batch
    w, b = (p.data for p in net.params["ip"])
    for sel in selectors:
        sel = np.array(sel, dtype=np.float64)
        x = RNG.standard_normal((4, 3))
        net.clear_param_diffs()
        out = net.forward(data=x, sel=sel)
        rows = np.flatnonzero(sel)
        assert net.blobs["ip"].shape == (len(rows), 2)
        assert float(out["loss"]) == pytest.approx((x[rows] @ w.T + b).sum(), rel=1e-12)
        net.backward()
        dx = np.zeros_like(x)
        dx[rows] = w.sum(axis=0)  # d(sum of ip)/d(kept row) = column sums of W
        np.testing.assert_allclose(net.blobs["data"].diff, dx, rtol=1e-12)
        np.testing.assert_allclose(net.params["ip"][0].diff,
                                   np.tile(x[rows].sum(axis=0), (2, 1)), rtol=1e-12)


def test_filter_feeding_a_split_and_in_place_layer():
    net = make_net("""
      layer { name: "in" type: "Input" top: "data" top: "sel"
              input_param { shape { dim: 3 dim: 2 } shape { dim: 3 } } }
      layer { name: "filter" type: "Filter" bottom: "data" bottom: "sel" top: "kept" }
      layer { name: "relu" type: "ReLU" bottom: "kept" top: "kept" }
      layer { name: "a" type: "Power" bottom: "kept" top: "a" power_param { scale: 2 } }
      layer { name: "b" type: "Power" bottom: "kept" top: "b" power_param { scale: 3 } }
    """, phase="test")
    x = np.array([[1.0, -1.0], [2.0, 3.0], [-4.0, 5.0]])
    out = net.forward(data=x, sel=np.array([1.0, 0.0, 1.0]))
    kept = np.maximum(x[[0, 2]], 0)
    np.testing.assert_array_equal(out["a"], 2 * kept)
    np.testing.assert_array_equal(out["b"], 3 * kept)


CONV_NET = """
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX global_pooling: true } }
"""


def naive_conv_max(x, w, b):
    """3x3 valid convolution then a global max, by loops."""
    n, _, h, wd = x.shape
    out = np.empty((n, w.shape[0]))
    for i in range(n):
        for o in range(w.shape[0]):
            best = -np.inf
            for r in range(h - 2):
                for c in range(wd - 2):
                    best = max(best, float((x[i, :, r:r + 3, c:c + 3] * w[o]).sum() + b[o]))
            out[i, o] = best
    return out


@pytest.mark.parametrize("shape", [(5, 2, 5, 5), (3, 2, 9, 7)])
def test_pycaffe_batch_idiom_reshapes_the_whole_net_on_forward(shape):
    # pycaffe: net.blobs["data"].reshape(N, C, H, W); net.blobs["data"].data[...] = x;
    # net.forward() -- no net.reshape() call; Caffe reshapes every layer on each forward.
    net = make_net(CONV_NET, phase="test")
    x = RNG.standard_normal(shape)
    net.blobs["data"].reshape(*shape)
    net.blobs["data"].data[...] = x
    out = net.forward()["pool"]
    w, b = (p.data for p in net.params["conv"])
    assert out.shape == (shape[0], 3, 1, 1)
    np.testing.assert_allclose(out[:, :, 0, 0], naive_conv_max(x, w, b), rtol=1e-10)

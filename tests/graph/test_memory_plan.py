"""Memory reuse for forward-only nets (netforge.graph.memory_plan, Net(reuse_memory=True)).

Sharing must never change a result: outputs equal bit for bit those of the same net without
sharing; kept blobs stay readable; blobs that are alive at the same time never share memory.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, GraphError
from netforge.graph import memory_plan
from netforge.layers.base import Layer, LayerContext, scratch_in
from netforge.net import Net

# Branches (an automatic Split), in-place ReLU, a Reshape view, Concat, Eltwise, both
# pooling kinds, convolutions with and without padding, InnerProduct and Softmax.
NET = """
name: "branchy"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 3 dim: 2 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "left" type: "Convolution" bottom: "conv1" top: "left"
        convolution_param { num_output: 3 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "right" type: "Convolution" bottom: "conv1" top: "right"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "left" bottom: "right" top: "sum" }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "conv1" top: "cat" }
layer { name: "pool1" type: "Pooling" bottom: "cat" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 5 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "flat" type: "Reshape" bottom: "pool2" top: "flat"
        reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def _param() -> pb.NetParameter:
    return config.parse_text(NET, pb.NetParameter(), "branchy.prototxt")


def _pair(**options):
    """The same net (same seed, so the same weights) without and with memory reuse."""
    return Net(_param(), "test", seed=3), Net(_param(), "test", seed=3, reuse_memory=True,
                                              **options)


def _batch(seed: int, shape=(3, 2, 12, 12)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_outputs_are_bit_identical_over_several_forwards():
    plain, shared = _pair()
    for seed in range(3):
        x = _batch(seed)
        expected = {k: v.copy() for k, v in plain.forward(data=x).items()}
        got = shared.forward(data=x)
        assert set(got) == {"prob"}
        np.testing.assert_array_equal(got["prob"], expected["prob"])


def test_memory_is_actually_shared():
    _, shared = _pair()
    memory = shared.plan.memory
    assert memory is not None
    assert memory.activation_bytes < memory.activation_bytes_before
    assert memory.scratch_bytes < memory.scratch_bytes_before
    # The blobs of the branches are dead once cat and pool1 have read them, so a later
    # activation lives in some of their memory.
    early, later = ("left", "right", "sum", "cat", "pool1"), ("conv2", "pool2", "ip")
    assert any(np.shares_memory(shared.blobs[x].data, shared.blobs[y].data)
               for x in early for y in later)


def test_a_blob_read_through_a_split_moves_into_the_arena_with_its_split_tops():
    """conv1 feeds three layers through an automatic Split, whose tops hold conv1's very
    array: the memory that moves into the arena must be conv1's own (the Split tops follow it),
    else conv1 keeps private memory that is never reused."""
    _, shared = _pair()
    plan = shared.plan
    conv1 = plan.blobs["conv1"].data
    assert "conv1" in plan.memory.shared_blobs
    assert conv1.base is not None  # a view into the arena
    splits = [step for step in plan.steps if step.layer.type == "Split"]
    assert splits and all(top.data is conv1 for top in splits[0].tops)




def test_diffs_are_dropped_zero_views():
    _, shared = _pair()
    assert shared.plan.memory.diff_bytes_dropped > 0
    for blob in [*shared.blobs.values(), *shared.params["conv1"]]:
        assert not blob.diff.flags.writeable and not blob.diff.any()
        assert blob.diff.shape == blob.shape


def test_blobs_alive_at_the_same_time_never_share_memory():
    _, shared = _pair()
    steps = shared.plan.steps
    # Per blob name: first step writing it and last step reading it.
    live = {}
    for i, step in enumerate(steps):
        for name in list(step.bottom_names) + list(step.top_names):
            first, _ = live.get(name, (i, i))
            live[name] = (first, i)
    names = list(live)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            (fa, la), (fb, lb) = live[names[a]], live[names[b]]
            if fa > lb or fb > la:
                continue  # never alive together
            da, db = shared.blobs[names[a]].data, shared.blobs[names[b]].data
            aliases = da is db or da.base is db or db.base is da or (
                da.base is not None and da.base is db.base and da.size == db.size)
            if np.shares_memory(da, db) and not aliases:
                pytest.fail(f"{names[a]} {live[names[a]]} and {names[b]} {live[names[b]]} "
                            "are alive together but share memory")


def test_kept_blobs_inputs_and_outputs_stay_readable():
    plain, shared = _pair(keep_blobs=["conv1", "pool1"])
    x = _batch(7)
    plain.forward(data=x)
    got = shared.forward(data=x, blobs=["conv1", "pool1"])
    for name in ("conv1", "pool1"):
        np.testing.assert_array_equal(got[name], plain.blobs[name].data)
        np.testing.assert_array_equal(shared.blobs[name].data, plain.blobs[name].data)
    np.testing.assert_array_equal(shared.blobs["data"].data, x)
    np.testing.assert_array_equal(shared.blobs["prob"].data, plain.blobs["prob"].data)


def test_forward_up_to_a_layer_returns_its_fresh_tops():
    plain, shared = _pair()
    x = _batch(2)
    expected = plain.forward(data=x, end="conv2")["conv2"].copy()
    np.testing.assert_array_equal(shared.forward(data=x, end="conv2")["conv2"], expected)


def test_reading_a_shared_blob_backward_or_a_resumed_forward_is_refused():
    _, shared = _pair()
    shared.forward(data=_batch(0))
    with pytest.raises(GraphError, match="keep_blobs"):
        shared.forward(blobs=["pool1"])
    with pytest.raises(ConfigError, match="forward only"):
        shared.backward()
    with pytest.raises(GraphError, match="pool1"):
        shared.forward(start="conv2")


def test_reshape_plans_again_and_stays_identical():
    plain, shared = _pair()
    for net in (plain, shared):
        net.blobs["data"].reshape(5, 2, 12, 12)
        net.reshape()
    x = _batch(4, (5, 2, 12, 12))
    expected = plain.forward(data=x)["prob"].copy()
    np.testing.assert_array_equal(shared.forward(data=x)["prob"], expected)
    memory = shared.plan.memory
    assert memory is not None and memory.activation_bytes < memory.activation_bytes_before


def test_a_layer_that_reshapes_its_tops_in_forward_disables_sharing():
    text = """
    layer { name: "data" type: "Input" top: "data" top: "keep"
            input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
    layer { name: "filter" type: "Filter" bottom: "data" bottom: "keep" top: "kept" }
    layer { name: "relu" type: "ReLU" bottom: "kept" top: "out" }
    """
    param = config.parse_text(text, pb.NetParameter(), "f.prototxt")
    net = Net(param, "test", reuse_memory=True)
    assert net.plan.memory is None
    out = net.forward(data=np.arange(12, dtype=np.float32).reshape(4, 3) - 5,
                      keep=np.array([1, 0, 1, 0], np.float32))["out"]
    np.testing.assert_array_equal(out, np.maximum(np.array([[-5, -4, -3], [1, 2, 3]]), 0))


# -- layer scratch shared in every net (training included) ----------------------------------


def _train_net(monkeypatch=None):
    text = NET.replace(
        'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }',
        'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 3 } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
        'top: "loss" }')
    param = config.parse_text(text, pb.NetParameter(), "train.prototxt")
    param.force_backward = True
    return Net(param, "train", seed=5)


def test_training_with_shared_scratch_is_bit_identical_to_private_scratch(monkeypatch):
    shared = _train_net()
    conv1, conv2 = shared.layer_dict["conv1"], shared.layer_dict["conv2"]
    assert np.shares_memory(conv1.workspaces[0][0][2]["top"], conv2.workspaces[0][0][2]["top"])
    # the columns that backward reuses stay private
    assert not np.shares_memory(conv1.workspaces[0][0][2]["col"],
                                conv2.workspaces[0][0][2]["col"])
    monkeypatch.setattr(memory_plan, "share_scratch", lambda plan, forward_only=False: (0, 0))
    private = _train_net()
    assert not np.shares_memory(private.layer_dict["conv1"].workspaces[0][0][2]["top"],
                                private.layer_dict["conv2"].workspaces[0][0][2]["top"])
    rng = np.random.default_rng(0)
    x, label = _batch(9), rng.integers(0, 6, 3)
    for net in (shared, private):
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = label
        for _ in range(2):
            net.forward_backward()
    for name, blob in private.blobs.items():
        np.testing.assert_array_equal(shared.blobs[name].data, blob.data)
        np.testing.assert_array_equal(shared.blobs[name].diff, blob.diff)
    for name, params in private.params.items():
        for mine, theirs in zip(shared.params[name], params, strict=True):
            np.testing.assert_array_equal(mine.diff, theirs.diff)


# -- the contract: Layer.scratch_buffers() is all the plan reads ----------------------------


class _Lender(Layer):
    """Declares two buffers, one kept for backward; also has the attributes the planner
    once looked up by name, which it must now ignore."""

    type = "Lender"

    def __init__(self, param, ctx):
        super().__init__(param, ctx)
        self.ws = {"a": np.zeros(10, np.float32), "b": np.zeros(3, np.float64)}
        self.old = {"x": np.zeros(50, np.float32)}

    def scratch_buffers(self):
        return scratch_in(self.ws, kept_for_backward=("b",))

    def train_scratch(self):
        return [self.old]

    forward_scratch = train_scratch


class _Silent(Layer):
    type = "Silent"

    def __init__(self, param, ctx):
        super().__init__(param, ctx)
        self.ws = {"c": np.zeros(100, np.uint8)}
        self.train_scratch = lambda: [self.ws]  # an attribute by the old name: ignored


def _fake_plan(*classes):
    ctx = LayerContext()
    layers = [cls(pb.LayerParameter(name=cls.type.lower(), type=cls.type), ctx)
              for cls in classes]
    return layers, SimpleNamespace(steps=[SimpleNamespace(layer=layer) for layer in layers])


def test_the_default_declaration_lends_nothing():
    _, plan = _fake_plan(_Silent)
    assert plan.steps[0].layer.scratch_buffers() == []
    before = plan.steps[0].layer.ws["c"]
    assert memory_plan.share_scratch(plan) == (0, 0)
    assert plan.steps[0].layer.ws["c"] is before


def test_only_declared_buffers_are_placed_kept_ones_only_without_backward():
    (lender, lender2), plan = _fake_plan(_Lender, _Lender)
    old_b, old_x = lender.ws["b"], lender.old["x"]
    # any net: "a" (40 bytes, one 64-byte piece) of each layer; one arena of 64 bytes
    assert memory_plan.share_scratch(plan) == (128, 64)
    assert np.shares_memory(lender.ws["a"], lender2.ws["a"])
    assert lender.ws["a"].shape == (10,) and lender.ws["a"].dtype == np.float32
    assert lender.ws["b"] is old_b and lender.old["x"] is old_x  # not declared shareable
    # forward only: "b" too, beside "a" within its layer
    assert memory_plan.share_scratch(plan, forward_only=True) == (256, 128)
    assert not np.shares_memory(lender.ws["a"], lender.ws["b"])
    assert np.shares_memory(lender.ws["b"], lender2.ws["b"])
    assert lender.ws["b"].shape == (3,) and lender.ws["b"].dtype == np.float64
    assert lender.old["x"] is old_x


def test_scratch_buffer_describes_and_replaces_its_array():
    ws = {"tmp": np.zeros((2, 3), np.float32), "keep": np.zeros(4)}
    buffer, = scratch_in(ws, ["tmp", "missing"])
    assert (buffer.name, buffer.shape, buffer.dtype, buffer.kept_for_backward) == (
        "tmp", (2, 3), np.float32, False)
    view = np.ones(6, np.float32).reshape(2, 3)
    buffer.place(view)
    assert ws["tmp"] is view and buffer.array is view


def test_real_layers_declare_what_they_may_lend():
    net = _train_net()
    conv = net.layer_dict["conv1"].scratch_buffers()
    assert {b.name for b in conv if b.kept_for_backward} == {"col"}  # backward reuses them
    assert all(b.array is b.workspace[b.name] for b in conv)
    for name in ("relu1", "ip", "pool1", "sum"):
        buffers = net.layer_dict[name].scratch_buffers()
        assert buffers and not any(b.kept_for_backward for b in buffers)
    assert net.layer_dict["cat"].scratch_buffers() == []  # Concat keeps its own


def test_batch_norm_lends_its_backward_temporary_only_when_it_has_one():
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
    """
    param = config.parse_text(text, pb.NetParameter(), "bn.prototxt")
    train = Net(param, "train").layer_dict["bn"].scratch_buffers()
    assert [(b.name, b.kept_for_backward) for b in train] == [("tmp", False)]
    assert Net(param, "test").layer_dict["bn"].scratch_buffers() == []  # global stats


def test_deconvolution_lends_its_workspaces_only_to_forward_only_nets():
    text = """
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
    layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
            convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
    """
    param = config.parse_text(text, pb.NetParameter(), "up.prototxt")
    up = Net(param, "test").layer_dict["up"]
    assert up.scratch_buffers() and all(b.kept_for_backward for b in up.scratch_buffers())
    assert memory_plan.shareable_scratch(up, forward_only=False) == []
    assert memory_plan.shareable_scratch(up, forward_only=True) == up.scratch_buffers()


def test_arena_packing_keeps_members_alive_together_apart():
    """pack_into_arena on random live ranges: members alive at the same time never share a
    byte (checked pair by pair), offsets stay aligned, and the arena is no smaller than the
    most bytes alive at one time (nor, here, much larger)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        items = []
        for k in range(40):
            start = int(rng.integers(0, 50))
            items.append((start, start + int(rng.integers(0, 15)), int(rng.integers(1, 5000)),
                          k))
        size, offsets = memory_plan.pack_into_arena(items)
        where = dict((member, offset) for offset, member in offsets)
        assert sorted(where) == list(range(40))
        for s1, e1, n1, m1 in items:
            assert where[m1] % 64 == 0 and where[m1] + n1 <= size
            for s2, e2, n2, m2 in items:
                if m1 < m2 and s1 <= e2 and s2 <= e1:  # alive together
                    o1, o2 = where[m1], where[m2]
                    assert o1 + n1 <= o2 or o2 + n2 <= o1, (m1, m2)
        peak = max(sum(memory_plan.aligned_bytes(n) for s, e, n, _ in items if s <= t <= e)
                   for t in range(70))
        assert peak <= size <= 1.5 * peak

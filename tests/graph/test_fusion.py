"""Fusion from the static graph (netforge.graph.fusion): which chains the pass finds, and a
fused net against the same net run layer by layer (``plan.fused`` emptied): forward outputs,
every blob's data and diff, parameter gradients and BatchNorm's running statistics, on
LeNet, a conv+BatchNorm+Scale+ReLU block and an AlexNet-like conv+ReLU chain, in float32
and float64. Every stage of a fused epilogue rounds as its layer does, so the comparison is
exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.graph import fusion
from netforge.net import Net

ROOT = Path(__file__).resolve().parents[2]


def _param(text: str) -> pb.NetParameter:
    return config.parse_text(text, pb.NetParameter(), "t.prototxt")


def _input(shape, label=True) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    text = (f'layer {{ name: "in" type: "Input" top: "data" '
            f'input_param {{ shape {{ {dims} }} }} }}\n')
    if label:
        text += (f'layer {{ name: "lab" type: "Input" top: "label" '
                 f'input_param {{ shape {{ dim: {shape[0]} }} }} }}\n')
    return text


def _conv(name, bottom, out, kernel=3, pad=1, stride=1, group=1, bias=True) -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {out} kernel_size: {kernel} pad: {pad} '
            f'stride: {stride} group: {group} bias_term: {str(bias).lower()} '
            'weight_filler { type: "gaussian" std: 0.3 } '
            'bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }\n')


def _relu(name, blob, slope=0.0) -> str:
    return (f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" '
            f'relu_param {{ negative_slope: {slope} }} }}\n')


def _bn_scale(name, blob, global_stats=None) -> str:
    stats = ("" if global_stats is None else
             f"batch_norm_param {{ use_global_stats: {str(global_stats).lower()} }} ")
    return (f'layer {{ name: "bn_{name}" type: "BatchNorm" bottom: "{blob}" top: "{blob}" '
            f'{stats}}}\n'
            f'layer {{ name: "scale_{name}" type: "Scale" bottom: "{blob}" top: "{blob}" '
            'scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } '
            'bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }\n')


def _head(bottom, classes=5) -> str:
    return (f'layer {{ name: "fc" type: "InnerProduct" bottom: "{bottom}" top: "fc" '
            f'inner_product_param {{ num_output: {classes} '
            'weight_filler { type: "gaussian" std: 0.1 } } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" '
            'top: "loss" }\n')


BN_BLOCK = (_input((4, 3, 8, 8)) + _conv("conv1", "data", 6, bias=False) + _bn_scale("1", "conv1")
            + _relu("relu1", "conv1") + _conv("conv2", "conv1", 4) + _bn_scale("2", "conv2")
            + _relu("relu2", "conv2", slope=0.1) + _head("conv2"))

ALEXNET_LIKE = (_input((2, 3, 19, 19)) + _conv("conv1", "data", 8, kernel=5, pad=0, stride=2)
                + _relu("relu1", "conv1")
                + 'layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" '
                  'lrn_param { local_size: 3 } }\n'
                + 'layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" '
                  'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
                + _conv("conv2", "pool1", 8, group=2) + _relu("relu2", "conv2")
                + _conv("conv3", "conv2", 6) + _relu("relu3", "conv3", slope=0.2)
                + _conv("conv4", "conv3", 6, kernel=1, pad=0) + _relu("relu4", "conv4")
                + 'layer { name: "fc6" type: "InnerProduct" bottom: "conv4" top: "fc6" '
                  'inner_product_param { num_output: 7 weight_filler { type: "gaussian" '
                  'std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }\n'
                + _relu("relu6", "fc6") + _head("fc6"))


def _lenet() -> pb.NetParameter:
    """Caffe's LeNet train_val with an Input layer in place of its Data layers."""
    source = config.load_net_param(ROOT / "configs/lenet_train_test.prototxt")
    net = _param(_input((4, 1, 28, 28)))
    net.layer.extend(layer for layer in source.layer if layer.type != "Data")
    return net


NETS = {"lenet": _lenet, "bn_block": lambda: _param(BN_BLOCK),
        "alexnet_like": lambda: _param(ALEXNET_LIKE)}


def _fill(net, seed=5):
    rng = np.random.default_rng(seed)
    for name in net.inputs:
        blob = net.blobs[name]
        if name == "label":
            blob.data[...] = rng.integers(0, 5, blob.shape)
        else:
            blob.data[...] = rng.standard_normal(blob.shape)
    for layer_name, blobs in net.params.items():  # trained-looking BatchNorm statistics
        if net.layer_dict[layer_name].type == "BatchNorm":
            c = blobs[0].shape[0]
            blobs[0].data[...] = rng.standard_normal(c) * 3
            blobs[1].data[...] = rng.uniform(0.5, 2.0, c) * 3
            blobs[2].data[...] = 3


def _run(param, phase, fused, dtype, backward=True, **options):
    net = Net(param, phase, seed=11, dtype=dtype, **options)
    _fill(net)
    chains = dict(net.plan.fused)
    if not fused:
        net.plan.fused = {}
    out = {k: np.array(v) for k, v in net.forward().items()}
    state = {f"data:{k}": np.array(b.data) for k, b in net.blobs.items()
             if not options.get("reuse_memory") or k in options.get("keep_blobs", ())}
    if backward:
        net.clear_param_diffs()
        net.backward()
        state.update({f"diff:{k}": np.array(b.diff) for k, b in net.blobs.items()})
        net.forward()  # a second step: BatchNorm's running statistics accumulate again
    state.update({f"param:{k}/{i}:{what}": np.array(getattr(p, what))
                  for k, ps in net.params.items() for i, p in enumerate(ps)
                  for what in (("data", "diff") if backward else ("data",))})
    return net, chains, out, state


def _assert_same(got, want):
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("phase", ["train", "test"])
@pytest.mark.parametrize("name", list(NETS))
def test_fused_net_equals_unfused_net(name, phase, dtype):
    param = NETS[name]()
    net, chains, out, state = _run(param, phase, True, dtype, backward=phase == "train")
    assert chains, "the pass found nothing to fuse"
    _, _, want_out, want_state = _run(param, phase, False, dtype, backward=phase == "train")
    _assert_same(out, want_out)
    _assert_same(state, want_state)


def _chain_names(param, phase):
    net = Net(param, phase, seed=1)
    return [chain.names for chain in net.plan.fused.values()]


def test_chains_found_on_lenet_and_alexnet_like():
    assert _chain_names(NETS["lenet"](), "train") == [["ip1", "relu1"]]
    assert _chain_names(NETS["alexnet_like"](), "test") == [
        ["conv1", "relu1"], ["conv2", "relu2"], ["conv3", "relu3"], ["conv4", "relu4"],
        ["fc6", "relu6"]]


def test_batch_norm_chains_follow_the_phase():
    """TEST (stored statistics): the convolution absorbs BatchNorm, Scale and ReLU. TRAIN
    (batch statistics): BatchNorm cannot be absorbed (its statistics need the whole output),
    so it heads its own chain with Scale and ReLU."""
    param = NETS["bn_block"]()
    assert _chain_names(param, "train") == [
        ["bn_1", "scale_1", "relu1"], ["bn_2", "scale_2", "relu2"]]
    # With a loss, a TEST net may run backward too: the learning Scales stay apart...
    assert _chain_names(param, "test") == [["conv1", "bn_1"], ["conv2", "bn_2"]]
    # ... unless nothing needs backward (a deploy net without loss), or the net shares
    # activation memory (forward only).
    deploy = _param(BN_BLOCK.split('layer { name: "fc"')[0].replace(_input((4, 3, 8, 8)), _input(
        (4, 3, 8, 8), label=False)))
    full = [["conv1", "bn_1", "scale_1", "relu1"], ["conv2", "bn_2", "scale_2", "relu2"]]
    assert _chain_names(deploy, "test") == full
    assert [c.names for c in Net(param, "test", reuse_memory=True).plan.fused.values()] == full


def test_frozen_batch_norm_in_training_keeps_a_learning_scale_apart():
    """BatchNorm with stored statistics in a TRAIN net: the convolution may absorb it (its
    backward needs only inv_std), but not the learning Scale after it, whose backward reads
    the BatchNorm output that a fused pass never writes."""
    param = _param(BN_BLOCK.replace('type: "BatchNorm" bottom: "conv1" top: "conv1" ',
                                    'type: "BatchNorm" bottom: "conv1" top: "conv1" '
                                    "batch_norm_param { use_global_stats: true } "))
    chains = _chain_names(param, "train")
    assert chains[0] == ["conv1", "bn_1"]
    assert ["scale_1", "relu1"] not in chains  # a Scale heads no chain
    for dtype in (np.float32, np.float64):
        _, _, out, state = _run(param, "train", True, dtype)
        _, _, want_out, want_state = _run(param, "train", False, dtype)
        _assert_same(out, want_out)
        _assert_same(state, want_state)


def test_relu_out_of_place_is_not_fused():
    """A ReLU writing another blob leaves the convolution's output readable: not fused."""
    text = (_input((2, 3, 6, 6), label=False) + _conv("conv1", "data", 4)
            + 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "r1" }\n')
    assert _chain_names(_param(text), "test") == []


def test_a_range_that_cuts_a_chain_runs_layer_by_layer():
    """forward(end="conv1") stops before the ReLU: conv1 holds the values before it."""
    param = NETS["alexnet_like"]()
    results = []
    for fused in (True, False):
        net = Net(param, "test", seed=3)
        _fill(net)
        if not fused:
            net.plan.fused = {}
        results.append(np.array(net.forward(end="conv1")["conv1"]))
        assert (results[-1] < 0).any()  # not rectified
        results.append(np.array(net.forward(start="relu1", end="relu1")["conv1"]))
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[3])
    np.testing.assert_array_equal(results[1], np.maximum(results[0], 0))


def test_reuse_memory_keeps_kept_blobs():
    """A predict net sharing activation memory: the kept blobs (here the head of a fused
    chain) hold the unfused net's values after forward."""
    param = NETS["bn_block"]()
    keep = ("conv1", "conv2")
    _, chains, out, state = _run(param, "test", True, np.float32, backward=False,
                                 reuse_memory=True, keep_blobs=keep)
    assert len(chains) == 2
    _, _, want_out, want_state = _run(param, "test", False, np.float32, backward=False,
                                      reuse_memory=True, keep_blobs=keep)
    assert {f"data:{k}" for k in keep} <= state.keys()
    _assert_same(out, want_out)
    _assert_same(state, want_state)


def test_fused_chains_run_and_no_fusion_env_turns_them_off(monkeypatch):
    net = Net(NETS["alexnet_like"](), "test", seed=1)
    ran = []
    real = fusion.FusedChain.forward
    monkeypatch.setattr(fusion.FusedChain, "forward", lambda self: ran.append(self.names)
                        or real(self))
    net.forward()
    assert ran == [chain.names for chain in net.plan.fused.values()]
    monkeypatch.setenv("NETFORGE_NO_FUSION", "1")
    assert Net(NETS["alexnet_like"](), "test", seed=1).plan.fused == {}


def _deploy_bn_block() -> pb.NetParameter:
    """BN_BLOCK without its loss: every chain absorbs BatchNorm, Scale and ReLU."""
    return _param(BN_BLOCK.split('layer { name: "fc"')[0].replace(
        _input((4, 3, 8, 8)), _input((4, 3, 8, 8), label=False)))


@pytest.mark.parametrize("name", ["deploy_bn_block", "alexnet_like"])
def test_blobs_a_user_asks_for_hold_the_unfused_values(name):
    """pycaffe's ``net.forward(blobs=[...])`` and ``net.blobs[...]`` after a forward, for
    every blob of the net, and ``forward(end=<a layer inside a chain>)`` (the values before
    the layers after it, e.g. conv1 before its BatchNorm): each equals the unfused net's."""
    param = _deploy_bn_block() if name == "deploy_bn_block" else NETS[name]()
    nets = []
    for fused in (True, False):
        net = Net(param, "test", seed=7)
        _fill(net)
        if not fused:
            net.plan.fused = {}
        nets.append(net)
    fused_net, plain_net = nets
    assert fused_net.plan.fused
    names = [n for n in fused_net.blobs if n not in fused_net.inputs]
    got = {k: np.array(v) for k, v in fused_net.forward(blobs=names).items()}
    want = {k: np.array(v) for k, v in plain_net.forward(blobs=names).items()}
    _assert_same(got, want)
    _assert_same({k: np.array(b.data) for k, b in fused_net.blobs.items()},
                 {k: np.array(b.data) for k, b in plain_net.blobs.items()})
    inside = [step.layer.name for chain in fused_net.plan.fused.values()
              for step in [chain.head, *chain.absorbed[:-1]]]
    for end in inside:
        got = {k: np.array(v) for k, v in fused_net.forward(end=end, blobs=names).items()}
        want = {k: np.array(v) for k, v in plain_net.forward(end=end, blobs=names).items()}
        _assert_same(got, want)
    # conv1 before its BatchNorm: the convolution alone, independently of either net.
    if name == "deploy_bn_block":
        conv1 = np.array(fused_net.forward(end="conv1")["conv1"])
        x = np.array(fused_net.blobs["data"].data, dtype=np.float64)
        w = np.array(fused_net.params["conv1"][0].data, dtype=np.float64)
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        naive = np.zeros(conv1.shape)
        for i in range(3):
            for j in range(3):
                naive += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 8, j:j + 8], w[:, :, i, j])
        np.testing.assert_allclose(conv1, naive, rtol=1e-4, atol=1e-4)
        assert (conv1 < 0).any()  # not rectified


def test_kept_blobs_of_a_memory_sharing_predict_net_via_forward_blobs():
    """``reuse_memory`` predict net: ``forward(blobs=keep)`` hands the kept chain outputs,
    equal to the unfused net's."""
    param = _deploy_bn_block()
    keep = ("conv1",)
    results = []
    for fused in (True, False):
        net = Net(param, "test", seed=7, reuse_memory=True, keep_blobs=keep)
        _fill(net)
        if not fused:
            net.plan.fused = {}
        else:
            assert len(net.plan.fused) == 2
        results.append({k: np.array(v) for k, v in net.forward(blobs=list(keep)).items()})
    _assert_same(results[0], results[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("split", [True, False], ids=["split", "one-core"])
@pytest.mark.parametrize("name", ["bn_block", "alexnet_like"])
def test_batch_of_one_split_over_the_pool_equals_unfused(name, split, dtype, monkeypatch):
    """At batch 1 a convolution's GEMM is split by output channels and an inner product's by
    outputs (ops/engine: single_image_conv, linear_forward); a fused epilogue then runs once
    over the whole top, giving the unfused layers' values bit for bit."""
    from netforge.ops import batch_split, engine

    before = batch_split.parts()
    batch_split.configure(2)
    # split even these small GEMMs, or run every one on one core
    monkeypatch.setattr(engine, "SPLIT_MIN_MACS", 0 if split else 1 << 40)
    calls = []
    real = engine.single_image_conv
    monkeypatch.setattr(engine, "single_image_conv",
                        lambda *a, **k: calls.append(k.get("epilogue")) or real(*a, **k))
    try:
        param = NETS[name]()
        for layer in param.layer:
            if layer.type == "Input":
                layer.input_param.shape[0].dim[0] = 1
        _, chains, out, state = _run(param, "test", True, dtype, backward=False)
        assert chains and any(ep is not None for ep in calls), "no fused batch-1 conv ran"
        _, _, want_out, want_state = _run(param, "test", False, dtype, backward=False)
    finally:
        batch_split.configure(before)
    _assert_same(out, want_out)
    _assert_same(state, want_state)

"""Training activations shared by liveness (netforge.graph.train_memory, ``activations=True``,
what ``Solver`` asks for).

Sharing must never change training: the weights after a few SGD steps equal, bit for bit,
those of the same solver with every activation kept (``share_activations=False``), on a
LeNet, a ResNet-like bottleneck block (BatchNorm→Scale→ReLU chains, a projection shortcut,
Eltwise SUM) and a DenseNet-like block (chained Concats). And the sharing must be real:
activations no backward reads hold other blobs' values (data or diffs) after a step.
"""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import GraphError
from netforge.train.solver import Solver

BATCH = 3
INPUT = f"""
layer {{ name: "input" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {BATCH} dim: 3 dim: 16 dim: 16 }}
                      shape {{ dim: {BATCH} }} }} }}
"""


def _conv(name, bottom, out, kernel=3, pad=1, stride=1, bias=True):
    return f"""
layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
        convolution_param {{ num_output: {out} kernel_size: {kernel} pad: {pad} stride: {stride}
                            bias_term: {"true" if bias else "false"}
                            weight_filler {{ type: "msra" }} }} }}"""


def _bn_scale(name, blob, relu=True):
    text = f"""
layer {{ name: "{name}_bn" type: "BatchNorm" bottom: "{blob}" top: "{name}_bn" }}
layer {{ name: "{name}_scale" type: "Scale" bottom: "{name}_bn" top: "{name}_bn"
        scale_param {{ bias_term: true }} }}"""
    if relu:
        text += f"""
layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}_bn" top: "{name}_bn" }}"""
    return text


def _head(bottom, pool="AVE"):
    return f"""
layer {{ name: "pool_head" type: "Pooling" bottom: "{bottom}" top: "pool_head"
        pooling_param {{ pool: {pool} kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool_head" top: "fc"
        inner_product_param {{ num_output: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}"""


LENET = INPUT + _conv("conv1", "data", 6, kernel=5, pad=0) + """
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }""" + _conv(
    "conv2", "pool1", 8, kernel=3, pad=0) + """
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 20 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

RESNET_BLOCK = (INPUT + _conv("conv1", "data", 8, bias=False) + _bn_scale("conv1", "conv1")
                + _conv("a", "conv1_bn", 4, kernel=1, pad=0, bias=False) + _bn_scale("a", "a")
                + _conv("b", "a_bn", 4, bias=False) + _bn_scale("b", "b")
                + _conv("c", "b_bn", 12, kernel=1, pad=0, bias=False)
                + _bn_scale("c", "c", relu=False)
                + _conv("proj", "conv1_bn", 12, kernel=1, pad=0, bias=False)
                + _bn_scale("proj", "proj", relu=False) + """
layer { name: "sum" type: "Eltwise" bottom: "c_bn" bottom: "proj_bn" top: "sum" }
layer { name: "sum_relu" type: "ReLU" bottom: "sum" top: "sum" }""" + _head("sum", "MAX"))


def _dense_block() -> str:
    text = INPUT + _conv("conv1", "data", 6)
    features = "conv1"
    for k in range(3):
        text += _bn_scale(f"d{k}", features) + _conv(f"d{k}_conv", f"d{k}_bn", 4)
        text += f"""
layer {{ name: "cat{k}" type: "Concat" bottom: "{features}" bottom: "d{k}_conv" top: "cat{k}" }}"""
        features = f"cat{k}"
    text += _bn_scale("trans", features) + _conv("trans_conv", "trans_bn", 8, kernel=1, pad=0)
    return text + _head("trans_conv")


NETS = {"lenet": LENET, "resnet_block": RESNET_BLOCK, "densenet_block": _dense_block()}


def _solver(text: str, share_activations: bool, **options) -> Solver:
    sp = config.parse_text('type: "SGD" base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 '
                           'lr_policy: "fixed" max_iter: 100 random_seed: 7 display: 0',
                           pb.SolverParameter())
    sp.train_net_param.CopyFrom(config.parse_text(text, pb.NetParameter(), "net.prototxt"))
    return Solver(sp, metrics=False, share_activations=share_activations, **options)


def _train(solver: Solver, steps: int) -> list[float]:
    """``steps`` SGD steps, each on its own random batch; the losses."""
    rng = np.random.default_rng(3)
    losses = []
    for _ in range(steps):
        data, label = solver.net.blobs["data"], solver.net.blobs["label"]
        data.data[...] = rng.standard_normal(data.shape).astype(np.float32)
        label.data[...] = rng.integers(0, 5, label.shape)
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    return losses


@pytest.mark.parametrize("recompute_columns", [False, True])
@pytest.mark.parametrize("name", sorted(NETS))
def test_weights_after_training_are_bit_identical_with_shared_activations(name,
                                                                          recompute_columns):
    """With recompute_columns, convolutions read their bottoms again in backward."""
    plain = _solver(NETS[name], False, recompute_columns=False)  # keeps everything
    lean = _solver(NETS[name], True, recompute_columns=recompute_columns)
    assert plain.net.plan.diffs.activation_blobs == []
    assert lean.net.plan.diffs.activation_blobs, "nothing was shared"
    assert _train(lean, 4) == _train(plain, 4)
    for a, b in zip(plain.net.learnable_params, lean.net.learnable_params, strict=True):
        np.testing.assert_array_equal(b.blob.data, a.blob.data, err_msg=a.layer_name)
    for slot_a, slot_b in zip(plain.rule.history, lean.rule.history, strict=True):
        for a, b in zip(slot_a, slot_b, strict=True):  # the momentum
            np.testing.assert_array_equal(b, a)


def test_activations_no_backward_reads_are_shared_and_the_others_are_kept():
    solver = _solver(NETS["resnet_block"], True)
    plan = solver.net.plan
    shared = set(plan.diffs.activation_blobs)
    # A convolution's output feeds only a BatchNorm (which keeps its own x_norm): shared.
    assert {"conv1", "a", "b", "c", "proj"} <= shared
    # What a backward reads (a ReLU its top, a convolution its bottom) is shared too, but
    # only once that backward ran; never the net's inputs or outputs.
    assert not {"data", "label", "loss"} & shared
    # Shared memory really holds two blobs: the convolutions' outputs share with one another
    # or with diffs (one timeline for both).
    holders = [np.shares_memory(plan.blobs[x].data, other)
               for x in ("conv1", "a", "b", "c", "proj")
               for y, blob in plan.blobs.items() if y != x
               for other in (blob.data, blob.diff) if other is not None]
    assert any(holders)


def test_asking_for_a_shared_activation_is_refused_and_keeping_them_all_works():
    lean = _solver(NETS["lenet"], True)
    with pytest.raises(GraphError, match="conv1.*share_activations=False"):
        lean.net.forward(blobs=["conv1"])
    plain = _solver(NETS["lenet"], False)
    _train(plain, 1)
    conv1 = plain.net.forward(blobs=["conv1"])["conv1"]
    assert not any(np.shares_memory(conv1, blob.data) for name, blob in
                   plain.net.plan.blobs.items() if name != "conv1")


def test_a_new_batch_size_plans_the_arena_again_and_stays_bit_identical():
    plain, lean = _solver(NETS["resnet_block"], False), _solver(NETS["resnet_block"], True)
    before = lean.net.plan.diffs.shared_bytes
    for solver in (plain, lean):
        solver.net.blobs["data"].reshape(BATCH + 2, 3, 16, 16)
        solver.net.blobs["label"].reshape(BATCH + 2)
        solver.net.reshape()
    assert lean.net.plan.diffs.activation_blobs
    assert lean.net.plan.diffs.shared_bytes > before
    assert _train(lean, 2) == _train(plain, 2)
    for a, b in zip(plain.net.learnable_params, lean.net.learnable_params, strict=True):
        np.testing.assert_array_equal(b.blob.data, a.blob.data, err_msg=a.layer_name)

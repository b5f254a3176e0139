"""Training memory by liveness (netforge.graph.train_memory, Plan.share_diffs).

Sharing diffs must never change a gradient: parameter gradients equal, bit for bit, those of
the same net with private diffs; two diffs that are alive at the same time (by a naive
reading of which backward steps touch them) never share memory; the whole training step —
forward, backward, update — allocates nothing that grows with the batch.
"""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.graph import train_memory
from netforge.net import Net
from netforge.ops import batch_split
from netforge.train.solver import Solver
from tests.ops.alloc import assert_batch_independent


def _net_text(batch: int = 3) -> str:
    """Branches (Split), in-place ReLU and BatchNorm→Scale, Eltwise, Concat, both pooling
    kinds, a Reshape view, Dropout, InnerProduct and two losses."""
    return f"""
    name: "branchy_train"
    layer {{ name: "data" type: "Input" top: "data" top: "label"
            input_param {{ shape {{ dim: {batch} dim: 2 dim: 12 dim: 12 }}
                          shape {{ dim: {batch} }} }} }}
    layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
            convolution_param {{ num_output: 4 kernel_size: 3 pad: 1
                                weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
    layer {{ name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }}
    layer {{ name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
            scale_param {{ bias_term: true }} }}
    layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
    layer {{ name: "left" type: "Convolution" bottom: "conv1" top: "left"
            convolution_param {{ num_output: 3 kernel_size: 1
                                weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
    layer {{ name: "right" type: "Convolution" bottom: "conv1" top: "right"
            convolution_param {{ num_output: 3 kernel_size: 3 pad: 1
                                weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
    layer {{ name: "sum" type: "Eltwise" bottom: "left" bottom: "right" top: "sum" }}
    layer {{ name: "cat" type: "Concat" bottom: "sum" bottom: "conv1" top: "cat" }}
    layer {{ name: "pool1" type: "Pooling" bottom: "cat" top: "pool1"
            pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}
    layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
            convolution_param {{ num_output: 5 kernel_size: 3
                                weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
    layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
            pooling_param {{ pool: AVE kernel_size: 2 stride: 2 }} }}
    layer {{ name: "flat" type: "Reshape" bottom: "pool2" top: "flat"
            reshape_param {{ shape {{ dim: 0 dim: -1 }} }} }}
    layer {{ name: "drop" type: "Dropout" bottom: "flat" top: "flat" }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
            inner_product_param {{ num_output: 6 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    layer {{ name: "ip2" type: "InnerProduct" bottom: "pool2" top: "ip2"
            inner_product_param {{ num_output: 1 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
    layer {{ name: "l2" type: "EuclideanLoss" bottom: "ip2" bottom: "label" top: "l2"
            loss_weight: 0.25 }}
    """


def _inputs(net, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = net.blobs["data"]
    data.data[...] = rng.standard_normal(data.shape).astype(np.float32)
    net.blobs["label"].data[...] = rng.integers(0, 6, net.blobs["label"].shape)


def _pair():
    param = config.parse_text(_net_text(), pb.NetParameter(), "branchy_train.prototxt")
    plain, shared = Net(param, "train", seed=5), Net(param, "train", seed=5)
    report = shared.plan.share_diffs()
    return plain, shared, report


def test_parameter_gradients_are_bit_identical_with_shared_diffs():
    plain, shared, report = _pair()
    assert report.slots and report.shared_bytes < report.bytes_before
    scale = shared.layer_dict["scale1"]  # reads BatchNorm's x_norm, not a copy of its own
    assert report.copy_bytes_saved > 0 and np.shares_memory(scale.bottom_copy,
                                                            shared.layer_dict["bn1"].x_norm)
    for seed in range(3):  # several passes: slots hold stale gradients from the last one
        for net in (plain, shared):
            _inputs(net, seed)
            net.clear_param_diffs()
            net.forward_backward()
        assert shared.loss() == plain.loss()
        for a, b in zip(plain.learnable_params, shared.learnable_params, strict=True):
            np.testing.assert_array_equal(b.blob.diff, a.blob.diff)


def _touching_steps(plan, blob) -> list[int]:
    """Backward steps that read (as a top) or write (as a propagated bottom) blob's diff, in
    a plan whose diffs are all private (so that sharing memory means aliasing: in-place
    tops, Reshape views)."""
    steps = []
    for i, step in enumerate(plan.steps):
        if not step.need_backward:
            continue
        as_top = any(np.shares_memory(top.diff, blob.diff) for top in step.tops)
        as_bottom = any(down and np.shares_memory(bottom.diff, blob.diff)
                        for bottom, down in zip(step.bottoms, step.propagate_down,
                                                strict=True))
        if as_top or as_bottom:
            steps.append(i)
    return steps


def test_diffs_alive_together_never_share_memory():
    plain, shared, report = _pair()
    names = report.shared_blobs
    for x in names:
        for y in names:
            a, b = shared.plan.blobs[x], shared.plan.blobs[y]
            if x >= y or not np.shares_memory(a.diff, b.diff):
                continue
            if np.shares_memory(plain.plan.blobs[x].diff, plain.plan.blobs[y].diff):
                continue  # the same diff seen through two names (views)
            steps_a = _touching_steps(plain.plan, plain.plan.blobs[x])
            steps_b = _touching_steps(plain.plan, plain.plan.blobs[y])
            assert max(steps_a) < min(steps_b) or max(steps_b) < min(steps_a), (x, y)


def test_net_inputs_and_loss_tops_keep_private_diffs():
    _, _, report = _pair()
    assert "loss" in report.private_blobs and "l2" in report.private_blobs
    assert not {"data", "label", "loss", "l2"} & set(report.shared_blobs)


@pytest.fixture
def single_slice():
    """Batch splitting off while probing: with slices on two cores, numpy's bounded iterator
    buffers are sometimes alive in both threads at once, which makes the peak vary."""
    before = batch_split.parts()
    batch_split.configure(1)
    yield
    batch_split.configure(before)


def _solver(batch: int) -> Solver:
    sp = config.parse_text('type: "SGD" base_lr: 0.01 momentum: 0.9 weight_decay: 0.001 '
                           'lr_policy: "fixed" max_iter: 1000 random_seed: 2 display: 0',
                           pb.SolverParameter())
    sp.train_net_param.CopyFrom(config.parse_text(_net_text(batch), pb.NetParameter()))
    solver = Solver(sp, metrics=False)
    _inputs(solver.net, 0)
    return solver


def test_solver_train_net_shares_its_diffs():
    solver = _solver(3)
    assert solver.net.plan.diffs is not None and solver.net.plan.diffs.slots


def test_whole_training_step_allocates_nothing_that_grows_with_the_batch(single_slice):
    """tests/ops/alloc.py's probe around Solver.step(1): forward, backward, the divergence
    guard, the loss scalars and the SGD update, all from buffers made before the step."""
    def make_step(n):
        solver = _solver(n)

        def step():
            with np.errstate(all="ignore"):
                solver.step(1)
        return step

    assert_batch_independent(make_step)


def test_recomputed_columns_give_bit_identical_gradients_from_shared_scratch():
    param = config.parse_text(_net_text(), pb.NetParameter(), "branchy_train.prototxt")
    plain, lean = Net(param, "train", seed=5), Net(param, "train", seed=5)
    lean.plan.share_diffs()
    train_memory.recompute_columns(lean.plan)
    conv = lean.layer_dict["right"]  # a 3x3 convolution: it has columns
    assert not conv.keep_columns
    for seed in range(2):
        for net in (plain, lean):
            _inputs(net, seed)
            net.clear_param_diffs()
            net.forward_backward()
        for a, b in zip(plain.learnable_params, lean.learnable_params, strict=True):
            np.testing.assert_array_equal(b.blob.diff, a.blob.diff)

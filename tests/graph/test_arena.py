"""One arena per net (netforge.graph.arena): every array a training step touches lives in the
arena's few buffers, the step allocates nothing beyond numpy's bounded iterator buffers, and
moving memory into the arena (or out, or again after a reshape) changes no value.

The references are independent of the arena: the array's root (its ``base`` chain, walked
here by numpy's own ``np.shares_memory`` against each buffer), tracemalloc's count of what the
step allocates, and a twin solver whose arena was released (private arrays, as before the
arena existed) trained on the same data.
"""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.blob import Blob
from netforge.graph.arena import KINDS, arrays_under, rebind, rebuilt
from netforge.layers.base import ScratchBuffer
from netforge.net import Net
from netforge.ops import batch_split
from netforge.train.solver import Solver
from tests.ops.alloc import assert_batch_independent

LENET = """
name: "lenet"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {batch} dim: 1 dim: 28 dim: 28 }}
                shape {{ dim: {batch} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
        convolution_param {{ num_output: 20 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param {{ num_output: 50 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param {{ num_output: 500 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
        include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""

# Two residual blocks with Caffe's BatchNorm→Scale pairs, an identity and a projection
# shortcut (Eltwise SUM), global average pooling.
RESNET = """
name: "resnet_style"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {batch} dim: 3 dim: 12 dim: 12 }}
                shape {{ dim: {batch} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 bias_term: false
                            weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }}
layer {{ name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param {{ bias_term: true }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "a2" type: "Convolution" bottom: "conv1" top: "a2"
        convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 bias_term: false
                            weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn_a2" type: "BatchNorm" bottom: "a2" top: "a2" }}
layer {{ name: "scale_a2" type: "Scale" bottom: "a2" top: "a2" scale_param {{ bias_term: true }} }}
layer {{ name: "res2" type: "Eltwise" bottom: "conv1" bottom: "a2" top: "res2" }}
layer {{ name: "relu2" type: "ReLU" bottom: "res2" top: "res2" }}
layer {{ name: "a3" type: "Convolution" bottom: "res2" top: "a3"
        convolution_param {{ num_output: 16 kernel_size: 3 pad: 1 stride: 2 bias_term: false
                            weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn_a3" type: "BatchNorm" bottom: "a3" top: "a3" }}
layer {{ name: "scale_a3" type: "Scale" bottom: "a3" top: "a3" scale_param {{ bias_term: true }} }}
layer {{ name: "proj3" type: "Convolution" bottom: "res2" top: "proj3"
        convolution_param {{ num_output: 16 kernel_size: 1 stride: 2 bias_term: false
                            weight_filler {{ type: "msra" }} }} }}
layer {{ name: "res3" type: "Eltwise" bottom: "proj3" bottom: "a3" top: "res3" }}
layer {{ name: "relu3" type: "ReLU" bottom: "res3" top: "res3" }}
layer {{ name: "pool" type: "Pooling" bottom: "res3" top: "pool"
        pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""

# A DenseNet-style pair of Concats (each block's output joins its input) with Dropout.
CONCAT = """
name: "concat_net"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {batch} dim: 2 dim: 10 dim: 10 }}
                shape {{ dim: {batch} }} }} }}
layer {{ name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1
                weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "c1" top: "c1" }}
layer {{ name: "cat1" type: "Concat" bottom: "data" bottom: "c1" top: "cat1" }}
layer {{ name: "c2" type: "Convolution" bottom: "cat1" top: "c2"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1
                weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "cat2" type: "Concat" bottom: "cat1" bottom: "c2" top: "cat2" }}
layer {{ name: "pool" type: "Pooling" bottom: "cat2" top: "pool"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "drop" type: "Dropout" bottom: "pool" top: "pool" }}
layer {{ name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param {{ num_output: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""

NETS = {"lenet": LENET, "resnet_style": RESNET, "concat": CONCAT}
CLASSES = {"lenet": 10, "resnet_style": 10, "concat": 5}


def make_solver(name: str, batch: int, solver_type: str = "SGD", test_net: bool = False):
    text = (f'type: "{solver_type}" base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 '
            'lr_policy: "fixed" max_iter: 1000 random_seed: 7 display: 0')
    if solver_type == "Adam":
        text = text.replace("momentum: 0.9", "momentum: 0.9 momentum2: 0.999")
    sp = config.parse_text(text, pb.SolverParameter())
    net = config.parse_text(NETS[name].format(batch=batch), pb.NetParameter())
    if test_net:
        sp.net_param.CopyFrom(net)
        sp.test_iter.append(1)
        sp.test_interval = 1000
    else:
        sp.train_net_param.CopyFrom(net)
    solver = Solver(sp, metrics=False)
    feed(solver.net, name, 0)
    return solver


def feed(net, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = net.blobs["data"]
    data.data[...] = rng.standard_normal(data.shape).astype(np.float32)
    net.blobs["label"].data[...] = rng.integers(0, CLASSES[name], net.blobs["label"].shape)


def in_buffers(array, buffers) -> bool:
    """Whether numpy sees ``array``'s memory inside one of ``buffers``."""
    return any(np.shares_memory(array, buffer) for buffer in buffers)


def arrays_of_a_step(solver):
    """(what, array) for every array a training step of ``solver`` reads or writes."""
    plan = solver.net.plan
    for name, blob in plan.blobs.items():
        yield f"blob {name} data", blob.data
        yield f"blob {name} diff", blob.diff
    for layer, blobs in plan.layer_params.items():
        for k, blob in enumerate(blobs):
            yield f"param {layer}[{k}] data", blob.data
            yield f"param {layer}[{k}] diff", blob.diff
    for k, slot in enumerate(solver.rule.history):
        for i, array in enumerate(slot):
            yield f"history {k}[{i}]", array
    for step in plan.steps:
        if step.bottoms:
            for array in arrays_under(step.layer):
                yield f"layer {step.layer.name} array {array.shape}", array


@pytest.fixture
def single_slice():
    """Batch splitting off while probing (as tests/graph/test_train_memory.py does): numpy's
    iterator buffers alive in two threads at once make the peak vary."""
    before = batch_split.parts()
    batch_split.configure(1)
    yield
    batch_split.configure(before)


@pytest.mark.parametrize("name", sorted(NETS))
def test_one_arena_backs_every_array_of_a_training_step(name):
    solver = make_solver(name, 4)
    arena = solver.net.plan.arena
    assert arena is not None and set(arena.buffers) == {
        "parameters", "activations", "gradients", "workspace", "history"}
    buffers = list(arena.buffers.values())
    assert len(buffers) == 5
    for _ in range(2):  # before the first step and after one: nothing moved out
        outside = [what for what, array in arrays_of_a_step(solver)
                   if array.size and not in_buffers(array, buffers)]
        assert outside == []
        with np.errstate(all="ignore"):
            solver.step(1)
    kinds = arena.buffers
    for blobs in solver.net.plan.layer_params.values():
        assert all(in_buffers(b.data, [kinds["parameters"]]) for b in blobs)
    assert all(in_buffers(h, [kinds["history"]]) for slot in solver.rule.history for h in slot)


def test_the_test_net_reads_the_train_nets_weights_in_the_train_arena():
    solver = make_solver("lenet", 4, test_net=True)
    train, test = solver.net, solver.test_nets[0]
    parameters = train.plan.arena.buffers["parameters"]
    with np.errstate(all="ignore"):
        solver.step(2)
    for name, blobs in test.params.items():
        for mine, theirs in zip(blobs, train.params[name], strict=True):
            assert mine.data is theirs.data and in_buffers(mine.data, [parameters])
    # The test net's own activations live in its own arena, not the train net's.
    own = list(test.plan.arena.buffers.values())
    assert in_buffers(test.blobs["ip2"].data, own)
    assert not in_buffers(test.blobs["ip2"].data, list(train.plan.arena.buffers.values()))


@pytest.mark.parametrize("name", sorted(NETS))
def test_whole_step_in_the_arena_allocates_nothing_that_grows_with_the_batch(name,
                                                                            single_slice):
    """tests/ops/alloc.py's probe around Solver.step(1) (after a warm-up step): forward,
    backward, the divergence guard and the update, from the arena only."""
    def make_step(batch):
        solver = make_solver(name, batch)

        def step():
            with np.errstate(all="ignore"):
                solver.step(1)
        return step

    assert_batch_independent(make_step, (32, 96) if name == "lenet" else (64, 256))


@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_training_in_the_arena_is_bit_identical_to_private_memory(name, solver_type):
    """A twin whose arena is released (every array its own, as before the arena) trains to
    the same weights, history and losses, bit for bit."""
    arena_solver, private = make_solver(name, 4, solver_type), make_solver(name, 4, solver_type)
    private.net.plan.arena.release()
    assert not private.net.plan.arena.adopted
    buffers = list(arena_solver.net.plan.arena.buffers.values())
    assert not in_buffers(private.net.params["ip" if name == "concat" else "fc"
                                             if name == "resnet_style" else "ip2"][0].data,
                          buffers)
    for seed in range(3):
        for solver in (arena_solver, private):
            feed(solver.net, name, seed)
            with np.errstate(all="ignore"):
                solver.step(1)
        assert arena_solver.smoothed_loss == private.smoothed_loss
    for a, b in zip(arena_solver.net.learnable_params, private.net.learnable_params,
                    strict=True):
        np.testing.assert_array_equal(a.blob.data, b.blob.data)
    for slot_a, slot_b in zip(arena_solver.rule.history, private.rule.history, strict=True):
        for a, b in zip(slot_a, slot_b, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_new_batch_size_lays_the_arena_out_again():
    solver = make_solver("resnet_style", 4)
    net = solver.net
    old = dict(net.plan.arena.buffers)
    net.blobs["data"].reshape(6, 3, 12, 12)
    net.blobs["label"].reshape(6)
    fresh = make_solver("resnet_style", 6)
    feed(net, "resnet_style", 1)
    feed(fresh.net, "resnet_style", 1)
    with np.errstate(all="ignore"):
        solver.step(1)
        fresh.step(1)
    new = net.plan.arena.buffers
    assert new["activations"] is not old["activations"]
    assert new["activations"].nbytes > old["activations"].nbytes
    # Nothing of the parameters or the solver's history changed: they did not move.
    assert new["parameters"] is old["parameters"] and new["history"] is old["history"]
    outside = [what for what, array in arrays_of_a_step(solver)
               if array.size and not in_buffers(array, list(new.values()))]
    assert outside == []
    for a, b in zip(net.learnable_params, fresh.net.learnable_params, strict=True):
        np.testing.assert_array_equal(a.blob.data, b.blob.data)


def test_a_reshape_of_a_net_sharing_memory_shares_again_inside_the_arena():
    """Plan.reshape runs share_memory inside it: the arena is laid out once, after, and the
    outputs equal a net built for the new batch."""
    param = config.parse_text(CONCAT.format(batch=3), pb.NetParameter())
    net = Net(param, "test", seed=4, reuse_memory=True)
    net.blobs["data"].reshape(5, 2, 10, 10)
    net.blobs["label"].reshape(5)
    fresh = Net(config.parse_text(CONCAT.format(batch=5), pb.NetParameter()), "test", seed=4)
    feed(net, "concat", 2)
    feed(fresh, "concat", 2)
    net.forward()
    fresh.forward()
    assert net.plan.memory is not None and net.plan.memory.shared_blobs
    buffers = list(net.plan.arena.buffers.values())
    assert all(in_buffers(net.blobs[n].data, buffers) for n in net.plan.memory.shared_blobs)
    np.testing.assert_array_equal(net.blobs["loss"].data, fresh.blobs["loss"].data)


def test_release_gives_every_region_an_array_of_its_own_as_the_passes_expect():
    """The memory passes group blobs by the array that owns their memory: after release, a
    blob that owned its array before the arena owns one again (same shape and dtype)."""
    solver = make_solver("resnet_style", 3)
    plan = solver.net.plan
    arena = plan.arena
    buffers = list(arena.buffers.values())
    arena.release(KINDS)
    assert not arena.adopted
    for blobs in plan.layer_params.values():
        for blob in blobs:
            assert blob.data.base is None and not in_buffers(blob.data, buffers)
    for slot in solver.rule.history:
        assert all(h.base is None for h in slot)  # each history array is its own again
    assert all(not in_buffers(b.data, buffers) for b in plan.blobs.values())


def test_rebind_rebuilds_views_in_lists_tuples_dicts_and_frozen_objects():
    old = np.arange(12.0)
    new = np.zeros(12)
    blob = Blob((12,))
    blob.data = old
    scratch = ScratchBuffer({"tmp": old[2:5]}, "tmp")
    holder = [blob, (3, old), {"a": old}, scratch]

    def replace(array):
        if array is old:
            return new
        if np.shares_memory(array, old):
            return new[2:5]
        return None

    rebind([holder], replace)
    assert blob.data is new and holder[1][0] == 3 and holder[1][1] is new
    assert holder[2]["a"] is new and np.shares_memory(scratch.array, new)


def test_a_view_with_negative_strides_is_refused_not_silently_left_behind():
    target = np.zeros(64, dtype=np.uint8)
    with pytest.raises(ValueError, match="negative strides"):
        rebuilt(np.arange(4.0)[::-1], target, 0, whole=False)

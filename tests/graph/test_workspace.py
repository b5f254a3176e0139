"""Pure shape inference: a layer's reshape returns its top shapes and declares the workspace it
needs (Layer.declare, declare_dict, declare_layout); the plan allocates it
(graph/shapes.py bind_workspace). Checked against tracemalloc (reshape allocates nothing, at
a batch where the declared workspace is megabytes) and against the arrays the plan bound
(every declaration has its array, of its shape and dtype)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.layers.base import WorkspaceSpec
from netforge.net import Net
from tests.graph.test_arena import NETS

# More layer kinds than the training nets: the normalizations, smooth neurons, PReLU in
# place, Deconvolution, SPP, stochastic pooling, an LSTM and the other losses.
ZOO = """
name: "zoo"
layer {{ name: "data" type: "Input" top: "data" top: "label" top: "seq" top: "cont"
        input_param {{ shape {{ dim: {batch} dim: 4 dim: 12 dim: 12 }} shape {{ dim: {batch} }}
                      shape {{ dim: 3 dim: {batch} dim: 5 }} shape {{ dim: 3 dim: {batch} }} }} }}
layer {{ name: "lrn" type: "LRN" bottom: "data" top: "lrn" }}
layer {{ name: "mvn" type: "MVN" bottom: "lrn" top: "mvn" }}
layer {{ name: "sig" type: "Sigmoid" bottom: "mvn" top: "sig" }}
layer {{ name: "prelu" type: "PReLU" bottom: "sig" top: "sig" }}
layer {{ name: "deconv" type: "Deconvolution" bottom: "sig" top: "deconv"
        convolution_param {{ num_output: 3 kernel_size: 2 stride: 2
                            weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "spp" type: "SPP" bottom: "deconv" top: "spp" spp_param {{ pyramid_height: 2 }} }}
layer {{ name: "sto" type: "Pooling" bottom: "deconv" top: "sto"
        pooling_param {{ pool: STOCHASTIC kernel_size: 2 stride: 2 }} }}
layer {{ name: "lstm" type: "LSTM" bottom: "seq" bottom: "cont" top: "lstm"
        recurrent_param {{ num_output: 6 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "spp" top: "ip"
        inner_product_param {{ num_output: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "hinge" type: "HingeLoss" bottom: "ip" bottom: "label" top: "hinge" }}
layer {{ name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "ip" bottom: "ip" top: "sce"
        propagate_down: true propagate_down: false }}
"""

ALL = dict(NETS, zoo=ZOO)


def build(name: str, batch: int) -> Net:
    text = ALL[name].format(batch=batch)
    return Net(config.parse_text(text, pb.NetParameter(), f"{name}.prototxt"), "train", seed=3)


def bound_pairs(layout, value, path=""):
    """(spec, the array the plan bound for it) for every WorkspaceSpec in ``layout``."""
    if isinstance(layout, WorkspaceSpec):
        yield layout, value
    elif isinstance(layout, dict):
        assert isinstance(value, dict) and set(value) == set(layout), path
        for key, item in layout.items():
            yield from bound_pairs(item, value[key], f"{path}.{key}")
    elif isinstance(layout, (list, tuple)):
        assert len(value) == len(layout), path
        for i, item in enumerate(layout):
            yield from bound_pairs(item, value[i], f"{path}[{i}]")
    else:
        assert value == layout, path  # plain values (slice bounds) pass through


@pytest.mark.parametrize("name", sorted(ALL))
def test_reshape_allocates_nothing_while_it_declares_megabytes(name):
    net = build(name, 64)
    declared = 0
    for step in net.plan.steps:
        if not step.bottoms:
            continue
        shapes = [b.shape for b in step.bottoms]
        tracemalloc.start()
        try:
            step.layer.reshape(shapes)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        specs = step.layer.workspace()
        declared += sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in specs)
        assert peak < 32 * 1024, (step.layer.label, peak)
    assert declared > 1 << 20  # what the layers used to allocate in these reshapes


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_declared_array_is_bound_with_its_shape_and_dtype(name):
    net = build(name, 4)
    names = set()
    for step in net.plan.steps:
        layer = step.layer
        for attribute, layout in layer.workspace_layouts.items():
            for spec, array in bound_pairs(layout, getattr(layer, attribute), attribute):
                assert tuple(array.shape) == spec.shape and array.dtype == spec.dtype, spec
                names.add((layer.type, spec.name))
    if name == "resnet_style":
        assert ("BatchNorm", "x_norm") in names and ("Convolution", "workspaces[0][0][2].col") \
            in names
        bn = net.layer_dict["bn1"]
        (x_norm,) = [s for s in bn.workspace() if s.name == "x_norm"]
        assert x_norm.kept_for_backward and x_norm.shape == (4, 8, 144)


def test_a_recurrent_carry_is_state_kept_while_its_shape_stands():
    net = build("zoo", 2)
    lstm = net.layer_dict["lstm"]
    (carry,) = [s for s in lstm.workspace() if s.name == "carry"]
    assert carry.state and not lstm.carry.any()  # zeros when first made
    lstm.carry[...] = 1.5
    net.reshape()  # nothing changed
    assert (lstm.carry == 1.5).all()

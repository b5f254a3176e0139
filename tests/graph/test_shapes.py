"""Pass: setup + reshape layer by layer, every blob allocated once; the reshape helpers."""

import logging

import numpy as np
import pytest

from netforge import netforge_pb2 as pb
from netforge.errors import GraphError, ShapeError
from netforge.fillers import fill
from netforge.graph.plan import LayerStep
from netforge.graph.shapes import infer_shapes, reshape_step, reshare_tops
from netforge.layers.base import Layer, NeuronLayer
from tests.graph.passes import INPUT, by_name, context, shaped

NET = INPUT + """
  layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
  layer { name: "r" type: "ReLU" bottom: "ip" top: "ip" }
  layer { name: "a" type: "Sigmoid" bottom: "ip" top: "a" }
  layer { name: "b" type: "TanH" bottom: "ip" top: "b" }
  layer { name: "flat" type: "Reshape" bottom: "b" top: "flat"
          reshape_param { shape { dim: -1 } } }
"""


def test_every_blob_is_allocated_once_with_its_inferred_shape(caplog):
    with caplog.at_level(logging.INFO, logger="netforge"):
        steps, blobs = shaped(NET)
    assert {name: blob.shape for name, blob in blobs.items()} == {
        "data": (2, 3), "ip": (2, 4), "ip_r_0_split_0": (2, 4), "ip_r_0_split_1": (2, 4),
        "a": (2, 4), "b": (2, 4), "flat": (8,)}
    step = by_name(steps)
    assert step["r"].tops[0] is step["r"].bottoms[0] is blobs["ip"]  # in place
    assert step["a"].bottoms == [blobs["ip_r_0_split_0"]]
    # Caffe's count: every top that is not in place, aliasing ones too; float64
    assert f"Memory required for data: {(6 + 5 * 8 + 8) * 8}" in caplog.messages


def test_aliasing_tops_view_their_bottoms_memory():
    steps, blobs = shaped(NET)
    for k in range(2):  # a split's tops are its bottom's array
        assert blobs[f"ip_r_0_split_{k}"].data is blobs["ip"].data
    assert np.shares_memory(blobs["flat"].data, blobs["b"].data)  # Reshape views
    assert not np.shares_memory(blobs["a"].data, blobs["ip"].data)


def test_setup_runs_in_net_order_drawing_weights_from_the_net_generator():
    text = NET.replace('top: "a" }', 'top: "a" }\n  layer { name: "ip2" type: "InnerProduct" '
                       'bottom: "a" top: "ip2" inner_product_param { num_output: 2 '
                       'weight_filler { type: "gaussian" } } }')
    steps, _ = shaped(text)
    rng = context().rng  # the same seed, drawn in file order: ip's weight, bias, ip2's
    gaussian, constant = pb.FillerParameter(type="gaussian"), pb.FillerParameter()
    expected = [fill(gaussian, (4, 3), rng, np.float64), fill(constant, (4,), rng, np.float64),
                fill(gaussian, (2, 4), rng, np.float64)]
    step = by_name(steps)
    got = [step["ip"].layer.blobs[0].data, step["ip"].layer.blobs[1].data,
           step["ip2"].layer.blobs[0].data]
    for mine, reference in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine, reference)


class _Transpose(NeuronLayer):
    """In place allowed, but its top shape differs: the pass must refuse it."""

    type = "Transpose"

    def reshape(self, bottom_shapes):
        return [tuple(reversed(bottom_shapes[0]))]


class _TwoShapes(Layer):
    type = "TwoShapes"

    def reshape(self, bottom_shapes):
        return [bottom_shapes[0], bottom_shapes[0]]


def _with(layer_class, bottom: str, top: str):
    """The INPUT net's steps plus one step of ``layer_class`` (not a registered type)."""
    steps, _ = shaped(INPUT)
    ctx = context()
    layer = layer_class(pb.LayerParameter(name="odd", type=layer_class.type), ctx)
    return steps + [LayerStep(layer, [bottom], [top], loss_weights=[0.0])], ctx


def test_an_in_place_top_may_not_change_shape():
    steps, ctx = _with(_Transpose, "data", "data")
    with pytest.raises(ShapeError, match='^Transpose "odd": in-place top "data" would change '
                       'shape \\(2, 3\\) -> \\(3, 2\\)$'):
        infer_shapes(steps, ctx)


def test_a_layer_must_give_one_shape_per_top():
    steps, ctx = _with(_TwoShapes, "data", "out")
    with pytest.raises(GraphError, match='^TwoShapes "odd" produced 2 top shape\\(s\\) for 1 '
                       'tops$'):
        infer_shapes(steps, ctx)


def test_reshape_step_follows_a_new_input_shape_and_keeps_views():
    steps, blobs = shaped(NET)
    blobs["data"].reshape((5, 3))
    for step in steps:
        reshape_step(step)
    assert blobs["ip"].shape == blobs["a"].shape == (5, 4)
    assert blobs["flat"].shape == (20,)
    assert blobs["ip_r_0_split_0"].data is blobs["ip"].data  # re-pointed, not stale
    assert np.shares_memory(blobs["flat"].data, blobs["b"].data)


def test_reshare_tops_repoints_aliases_at_new_memory():
    steps, blobs = shaped(NET)
    blobs["ip"].data = np.ones((2, 4))
    blobs["b"].data = np.full((2, 4), 2.0)
    reshare_tops(steps)
    assert blobs["ip_r_0_split_1"].data is blobs["ip"].data
    np.testing.assert_array_equal(blobs["flat"].data, np.full(8, 2.0))


def test_sources_keep_the_shape_a_caller_gave():
    steps, blobs = shaped(INPUT)
    blobs["data"].reshape((7, 3))
    reshape_step(steps[0])
    assert blobs["data"].shape == (7, 3)  # not the (2, 3) of its input_param

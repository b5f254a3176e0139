"""Pass: one Layer per LayerParameter, unique names, the net's phase."""

import pytest

from netforge import netforge_pb2 as pb
from netforge.errors import GraphError
from netforge.graph.instantiate import check_layer_names, create_layers
from netforge.layers.common import InnerProductLayer
from netforge.layers.neuron import DropoutLayer
from tests.graph.passes import INPUT, compile_text, context, param

NET = INPUT + """
  layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          inner_product_param { num_output: 2 } }
  layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" phase: TEST }
"""


def test_one_layer_object_per_parameter_in_file_order():
    net = param(NET)
    layers = create_layers(net, context("TRAIN"))
    assert [type(layer) for layer in layers[1:]] == [InnerProductLayer, DropoutLayer]
    assert [layer.param for layer in layers] == list(net.layer)
    assert not any(layer.blobs for layer in layers)  # weights come with setup, later


def test_the_net_phase_is_the_default_and_a_layer_phase_wins():
    net = param(NET)
    layers = create_layers(net, context("TRAIN"))
    assert [layer.phase for layer in layers] == ["TRAIN", "TRAIN", "TEST"]
    assert [lp.phase for lp in net.layer] == [pb.TRAIN, pb.TRAIN, pb.TEST]  # written back


def test_layer_names_must_be_unique():
    check_layer_names(param(NET))
    twice = param(NET + 'layer { name: "ip" type: "ReLU" bottom: "ip" top: "r" }')
    with pytest.raises(GraphError, match='^two layers are named "ip"; layer names must be '
                       'unique$'):
        check_layer_names(twice)
    with pytest.raises(GraphError, match='two layers are named "ip"'):
        compile_text(NET + 'layer { name: "ip" type: "ReLU" bottom: "ip" top: "r" }')

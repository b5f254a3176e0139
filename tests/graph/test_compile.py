"""Graph compile passes, each alone: split insertion, wiring, params, loss weights, backward."""

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import GraphError, ShapeError
from netforge.graph import compile as graph
from netforge.layers.base import LayerContext


def _param(text: str) -> pb.NetParameter:
    return config.upgrade_net(config.parse_text(text, pb.NetParameter(), "t.prototxt"))


def _compile(text: str, phase: str = "TRAIN") -> graph.Plan:
    ctx = LayerContext(phase=phase, dtype=np.dtype(np.float64), rng=np.random.default_rng(0))
    return graph.compile_net(_param(text), ctx)


INPUT = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
LABEL = ('layer { name: "lab" type: "Input" top: "label" '
         "input_param { shape { dim: 2 } } }\n")


def test_split_naming_follows_caffe():
    net = _param(INPUT + """
      layer { name: "a" type: "ReLU" bottom: "data" top: "a" }
      layer { name: "b" type: "ReLU" bottom: "data" top: "b" }
      layer { name: "c" type: "Eltwise" bottom: "data" bottom: "a" top: "c" }
    """)
    split = graph.insert_splits(net)
    names = [layer.name for layer in split.layer]
    assert names == ["in", "data_in_0_split", "a", "b", "c"]
    s = split.layer[1]
    assert list(s.bottom) == ["data"]
    assert list(s.top) == [f"data_in_0_split_{k}" for k in range(3)]
    assert [list(layer.bottom) for layer in split.layer[2:]] == [
        ["data_in_0_split_0"], ["data_in_0_split_1"], ["data_in_0_split_2", "a"]]


def test_no_split_for_single_consumer_or_in_place_chain():
    net = _param(INPUT + """
      layer { name: "r" type: "ReLU" bottom: "data" top: "data" }
      layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }
    """)
    assert [layer.type for layer in graph.insert_splits(net).layer] == ["Input", "ReLU", "Sigmoid"]


def test_loss_weighted_top_counts_as_a_consumer_and_weight_moves_to_split():
    net = _param(INPUT + """
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" loss_weight: 0.5
              inner_product_param { num_output: 2 } }
      layer { name: "r" type: "ReLU" bottom: "ip" top: "r" }
    """)
    split = graph.insert_splits(net)
    ip, s = split.layer[1], split.layer[2]
    assert not ip.loss_weight
    assert s.name == "ip_ip_0_split" and list(s.loss_weight) == [0.5, 0.0]
    assert list(split.layer[3].bottom) == ["ip_ip_0_split_1"]


def test_unknown_bottom_names_layer_and_blob():
    with pytest.raises(GraphError, match='layer "r" \\(ReLU\\): unknown bottom blob "nope"'):
        _compile(INPUT + 'layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }')


def test_bottom_must_be_produced_above_file_order():
    with pytest.raises(GraphError, match='unknown bottom blob "late"'):
        _compile(INPUT + """
          layer { name: "r" type: "ReLU" bottom: "late" top: "r" }
          layer { name: "s" type: "ReLU" bottom: "data" top: "late" }
        """)


def test_duplicate_top_is_refused():
    with pytest.raises(GraphError, match="produced by multiple sources"):
        _compile(INPUT + """
          layer { name: "a" type: "ReLU" bottom: "data" top: "x" }
          layer { name: "b" type: "Sigmoid" bottom: "x" top: "x2" }
          layer { name: "c" type: "TanH" bottom: "x2" top: "x" }
        """)


def test_in_place_shares_the_blob_and_is_refused_where_unsafe():
    plan = _compile(INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }')
    step = plan.steps[1]
    assert step.tops[0] is step.bottoms[0]
    with pytest.raises(GraphError, match="cannot compute in place"):
        _compile(INPUT + 'layer { name: "s" type: "Softmax" bottom: "data" top: "data" }')


def test_arity_is_checked_centrally():
    with pytest.raises(GraphError, match='Pooling "p" takes 1 bottom blob, got 2'):
        _compile(INPUT + LABEL + 'layer { name: "p" type: "Pooling" bottom: "data" '
                 'bottom: "label" top: "p" pooling_param { kernel_size: 1 } }')


def test_outputs_are_sorted_alphabetically():
    plan = _compile(INPUT + """
      layer { name: "z" type: "ReLU" bottom: "data" top: "zeta" }
      layer { name: "a" type: "Sigmoid" bottom: "zeta" top: "alpha" }
      layer { name: "m" type: "TanH" bottom: "zeta" top: "mid" }
    """)
    assert plan.outputs == ["alpha", "mid"]


def test_shape_error_names_layer_and_shapes():
    with pytest.raises(ShapeError, match='Eltwise "e": bottom "b" has shape'):
        _compile("""
          layer { name: "i" type: "Input" top: "a" top: "b"
                  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
          layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" }
        """)


SHARED = INPUT + """
  layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
          param { name: "w" } inner_product_param { num_output: 4 bias_term: false
          weight_filler { type: "gaussian" } } }
  layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2"
          param { name: "w" } inner_product_param { num_output: 4 bias_term: false } }
"""


def test_params_shared_by_name_share_storage():
    plan = _compile(SHARED)
    w1, w2 = plan.layer_params["ip1"][0], plan.layer_params["ip2"][0]
    assert w1 is w2
    assert len(plan.learnable) == 1


def test_shared_param_shape_mismatch():
    with pytest.raises(ShapeError, match='shared param "w"'):
        _compile(SHARED.replace("num_output: 4 bias_term: false }", "num_output: 5 "
                                "bias_term: false }"))


def test_loss_weights_default_and_explicit():
    plan = _compile(INPUT + LABEL + """
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              inner_product_param { num_output: 3 } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
      layer { name: "aux" type: "ReLU" bottom: "ip" top: "aux" loss_weight: 0.3 }
    """)
    weights = {s.layer.name: s.loss_weights for s in plan.steps}
    assert weights["loss"] == [1.0] and weights["aux"] == [pytest.approx(0.3)]


BACKWARD = INPUT + LABEL + """
  layer { name: "frozen" type: "InnerProduct" bottom: "data" top: "f"
          param { lr_mult: 0 } param { lr_mult: 0 } inner_product_param { num_output: 3 } }
  layer { name: "ip" type: "InnerProduct" bottom: "f" top: "ip"
          inner_product_param { num_output: 3 } }
  layer { name: "side" type: "InnerProduct" bottom: "data" top: "side"
          inner_product_param { num_output: 3 } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_need_backward_prunes_frozen_and_loss_free_layers():
    plan = _compile(BACKWARD)
    need = {s.layer.name: s.need_backward for s in plan.steps}
    assert need == {"in": False, "lab": False, "data_in_0_split": False, "frozen": False,
                    "ip": True, "side": False, "loss": True}
    ip = next(s for s in plan.steps if s.layer.name == "ip")
    assert ip.propagate_down == [False]  # nothing below ip learns
    loss = next(s for s in plan.steps if s.layer.name == "loss")
    assert loss.propagate_down == [True, False]  # never into the labels


def test_propagate_down_false_skips_bottom_gradient():
    plan = _compile(INPUT + LABEL + """
      layer { name: "first" type: "InnerProduct" bottom: "data" top: "f"
              inner_product_param { num_output: 3 } }
      layer { name: "ip" type: "InnerProduct" bottom: "f" top: "ip" propagate_down: false
              inner_product_param { num_output: 3 } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """)
    steps = {s.layer.name: s for s in plan.steps}
    assert steps["ip"].need_backward and steps["ip"].propagate_down == [False]
    assert not steps["first"].need_backward  # nothing flows back into it any more


def test_force_backward_turns_everything_on():
    plan = _compile("force_backward: true\n" + BACKWARD)
    frozen = next(s for s in plan.steps if s.layer.name == "frozen")
    assert frozen.need_backward and frozen.layer.param_propagate_down == [True, True]


def test_plan_allocates_every_blob_once():
    plan = _compile(INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n'
                    'layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }')
    assert list(plan.blobs) == ["data", "s"]

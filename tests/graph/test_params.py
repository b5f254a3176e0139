"""Passes: loss weights per top, and parameter sharing by ParamSpec name."""

import numpy as np
import pytest

from netforge.errors import GraphError, ShapeError
from netforge.graph.params import assign_loss_weights, loss_tops, share_params
from tests.graph.passes import INPUT, LABEL, by_name, compile_text, shaped, wired


def test_loss_layers_weigh_top_zero_by_one_and_others_zero():
    steps = by_name(wired(INPUT + LABEL + """
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              inner_product_param { num_output: 3 } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
              top: "loss" top: "prob" }
      layer { name: "two" type: "ReLU" bottom: "ip" top: "two" loss_weight: 2 }
    """))
    assign_loss_weights(list(steps.values()))
    assert steps["loss"].loss_weights == [1.0, 0.0]
    assert steps["ip"].loss_weights == [0.0]  # not a loss layer
    assert steps["two"].loss_weights == [2.0]  # any layer may carry a loss


def test_explicit_weights_replace_the_default_and_must_match_the_tops():
    steps = by_name(wired(INPUT + LABEL + 'layer { name: "loss" type: "SoftmaxWithLoss" '
                          'bottom: "data" bottom: "label" top: "loss" top: "prob" '
                          'loss_weight: 0 loss_weight: 0.25 }'))
    assign_loss_weights(list(steps.values()))
    assert steps["loss"].loss_weights == [0.0, 0.25]
    bad = wired(INPUT + LABEL + 'layer { name: "loss" type: "SoftmaxWithLoss" '
                'bottom: "data" bottom: "label" top: "loss" top: "prob" loss_weight: 1 }')
    with pytest.raises(GraphError, match='SoftmaxWithLoss "loss" has 1 loss_weight value\\(s\\) '
                       'for 2 top\\(s\\)'):
        assign_loss_weights(bad)


def test_loss_tops_are_the_weighted_tops_in_order():
    steps, blobs = shaped(INPUT + LABEL + """
      layer { name: "aux" type: "ReLU" bottom: "data" top: "aux" loss_weight: 0.5 }
      layer { name: "loss" type: "EuclideanLoss" bottom: "aux" bottom: "data" top: "loss" }
    """)
    got = loss_tops(steps)
    # aux is read by the loss too: its weight moved to the split's first top
    split = by_name(steps)["aux_aux_0_split"]
    assert [(id(top), w) for top, w in got] == [(id(split.tops[0]), 0.5),
                                                (id(blobs["loss"]), 1.0)]


def test_loss_weights_default_and_explicit():  # moved from test_compile.py
    plan = compile_text(INPUT + LABEL + """
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              inner_product_param { num_output: 3 } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
      layer { name: "aux" type: "ReLU" bottom: "ip" top: "aux" loss_weight: 0.3 }
    """)
    weights = {s.layer.name: s.loss_weights for s in plan.steps}
    assert weights["loss"] == [1.0] and weights["aux"] == [pytest.approx(0.3)]


# -- sharing ---------------------------------------------------------------------------------

SHARED = INPUT + """
  layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
          param { name: "w" } inner_product_param { num_output: 4 bias_term: false
          weight_filler { type: "gaussian" } } }
  layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2"
          param { name: "w" } inner_product_param { num_output: 4 bias_term: false } }
"""


def _shared(text):
    steps, _ = shaped(text)
    return by_name(steps), share_params(steps)


def test_params_shared_by_name_share_storage():  # moved from test_compile.py
    plan = compile_text(SHARED)
    w1, w2 = plan.layer_params["ip1"][0], plan.layer_params["ip2"][0]
    assert w1 is w2
    assert len(plan.learnable) == 1


def test_the_first_layer_owns_a_shared_param_and_the_others_point_at_it():
    steps, (learnable, layer_params) = _shared(SHARED)
    owner = steps["ip1"].layer.blobs[0]
    assert np.any(owner.data != 0)  # ip1's gaussian filler, not ip2's zeros
    assert steps["ip2"].layer.blobs[0] is owner
    assert [(p.layer_name, p.index, p.name) for p in learnable] == [("ip1", 0, "w")]
    assert list(layer_params) == ["ip1", "ip2"]
    assert layer_params["ip2"] is steps["ip2"].layer.blobs


def test_unnamed_params_are_each_their_own_with_their_multipliers():
    _, (learnable, _) = _shared(INPUT + """
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
              inner_product_param { num_output: 2 } }
    """)
    assert [(p.index, p.lr_mult, p.decay_mult) for p in learnable] == [(0, 1.0, 1.0),
                                                                       (1, 2.0, 0.0)]


def test_shared_param_shape_mismatch():  # moved from test_compile.py
    with pytest.raises(ShapeError, match='shared param "w"'):
        compile_text(SHARED.replace("num_output: 4 bias_term: false }", "num_output: 5 "
                                    "bias_term: false }"))


def test_strict_sharing_needs_equal_shapes_permissive_only_equal_counts():
    # (4, 3) and (2, 6) weights: the same 12 values, another shape
    text = INPUT.replace("dim: 3", "dim: 6") + """
      layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
              param { name: "w" } inner_product_param { num_output: 2 axis: 1
              bias_term: false } }
      layer { name: "r" type: "Reshape" bottom: "data" top: "r"
              reshape_param { shape { dim: 4 dim: 3 } } }
      layer { name: "b" type: "InnerProduct" bottom: "r" top: "b"
              param { name: "w" MODE } inner_product_param { num_output: 4
              bias_term: false } }
    """
    with pytest.raises(ShapeError, match='InnerProduct "b": shared param "w" has shape '
                       '\\(4, 3\\) here but \\(2, 6\\) in its owner \\(layer "a"\\)'):
        _shared(text.replace("MODE", ""))
    steps, (learnable, _) = _shared(text.replace("MODE", "share_mode: PERMISSIVE"))
    assert steps["b"].layer.blobs[0] is steps["a"].layer.blobs[0] and len(learnable) == 1
    with pytest.raises(ShapeError, match='has 15 values here but 12 in its owner'):
        _shared(text.replace("MODE", "share_mode: PERMISSIVE").replace("num_output: 4\n",
                                                                        "num_output: 5\n"))


def test_multipliers_must_agree_and_a_sharer_may_supply_a_missing_one():
    text = SHARED.replace('param { name: "w" } inner_product_param { num_output: 4 bias_term: '
                          'false } }', 'param { name: "w" SPEC } inner_product_param { '
                          'num_output: 4 bias_term: false } }')
    first = text.replace('param { name: "w" } inner_product_param', 'param { name: "w" '
                         'lr_mult: 3 } inner_product_param', 1)
    with pytest.raises(GraphError, match='InnerProduct "ip2": shared param "w" has '
                       'mismatched lr_mult'):
        _shared(first.replace("SPEC", "lr_mult: 2"))
    _, (learnable, _) = _shared(first.replace("SPEC", "lr_mult: 3 decay_mult: 0.5"))
    assert (learnable[0].lr_mult, learnable[0].decay_mult) == (3.0, 0.5)


def test_more_param_specs_than_blobs_is_refused():
    with pytest.raises(GraphError, match='ReLU "r" has 1 param \\{\\} entries but only 0 '
                       'parameter blob'):
        _shared(INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" param { } }')

"""Pass: need-backward and propagate-down, by Caffe's rules (Net::Init)."""

import pytest

from netforge.errors import GraphError
from netforge.graph.backward import (
    force_backward,
    mark_need_backward,
    propagate_need_backward,
    prune_backward,
)
from netforge.graph.params import share_params
from tests.graph.passes import INPUT, LABEL, by_name, compile_text, shaped

BACKWARD = INPUT + LABEL + """
  layer { name: "frozen" type: "InnerProduct" bottom: "data" top: "f"
          param { lr_mult: 0 } param { lr_mult: 0 } inner_product_param { num_output: 3 } }
  layer { name: "ip" type: "InnerProduct" bottom: "f" top: "ip"
          inner_product_param { num_output: 3 } }
  layer { name: "side" type: "InnerProduct" bottom: "data" top: "side"
          inner_product_param { num_output: 3 } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _steps(text):
    steps, _ = shaped(text)
    share_params(steps)
    return steps


def test_forward_walk_marks_what_learns_and_what_is_fed_by_a_learner():
    steps = _steps(BACKWARD)
    propagate_need_backward(steps)
    step = by_name(steps)
    need = {name: s.need_backward for name, s in step.items()}
    assert need == {"in": False, "lab": False, "data_in_0_split": False, "frozen": False,
                    "ip": True, "side": True, "loss": True}  # side is pruned later
    assert step["frozen"].layer.param_propagate_down == [False, False]  # lr_mult 0
    assert step["ip"].layer.param_propagate_down == [True, True]
    assert step["ip"].propagate_down == [False]  # frozen's top needs no gradient
    assert step["loss"].propagate_down == [True, False]  # never into the labels


def test_pruning_drops_layers_no_loss_depends_on():
    steps = _steps(BACKWARD)
    propagate_need_backward(steps)
    prune_backward(steps)
    step = by_name(steps)
    assert not step["side"].need_backward and step["side"].propagate_down == [False]
    assert step["ip"].need_backward and step["loss"].need_backward


def test_need_backward_prunes_frozen_and_loss_free_layers():  # moved from test_compile.py
    plan = compile_text(BACKWARD)
    need = {s.layer.name: s.need_backward for s in plan.steps}
    assert need == {"in": False, "lab": False, "data_in_0_split": False, "frozen": False,
                    "ip": True, "side": False, "loss": True}
    ip = next(s for s in plan.steps if s.layer.name == "ip")
    assert ip.propagate_down == [False]  # nothing below ip learns
    loss = next(s for s in plan.steps if s.layer.name == "loss")
    assert loss.propagate_down == [True, False]  # never into the labels
    assert all(s.layer.need_backward == s.need_backward for s in plan.steps)


def test_propagate_down_false_skips_bottom_gradient():  # moved from test_compile.py
    plan = compile_text(INPUT + LABEL + """
      layer { name: "first" type: "InnerProduct" bottom: "data" top: "f"
              inner_product_param { num_output: 3 } }
      layer { name: "ip" type: "InnerProduct" bottom: "f" top: "ip" propagate_down: false
              inner_product_param { num_output: 3 } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """)
    steps = {s.layer.name: s for s in plan.steps}
    assert steps["ip"].need_backward and steps["ip"].propagate_down == [False]
    assert not steps["first"].need_backward  # nothing flows back into it any more


def test_propagate_down_true_asks_for_a_gradient_nothing_else_needs():
    steps = _steps(INPUT + LABEL + """
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" propagate_down: true
              inner_product_param { num_output: 3 } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
              propagate_down: true propagate_down: true }
    """)
    mark_need_backward(steps, force=False)
    step = by_name(steps)
    assert step["ip"].propagate_down == [True]  # into the Input's data
    assert step["loss"].propagate_down == [True, False]  # labels stay excluded


def test_propagate_down_needs_one_value_per_bottom():
    steps = _steps(INPUT + LABEL + 'layer { name: "loss" type: "SoftmaxWithLoss" '
                   'bottom: "data" bottom: "label" top: "loss" propagate_down: false }')
    with pytest.raises(GraphError, match='^SoftmaxWithLoss "loss": propagate_down must have '
                       'one value per bottom \\(2\\), got 1$'):
        propagate_need_backward(steps)


def test_a_layer_without_backward_never_runs_backward():
    steps = _steps(INPUT + LABEL + """
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              inner_product_param { num_output: 3 } }
      layer { name: "t" type: "Threshold" bottom: "ip" top: "t" }
      layer { name: "loss" type: "EuclideanLoss" bottom: "t" bottom: "data" top: "loss" }
    """)
    mark_need_backward(steps, force=False)
    step = by_name(steps)
    assert not step["t"].need_backward and not step["t"].layer.need_backward
    # t's top needs no gradient, the data none either: the loss sends none down
    assert step["loss"].propagate_down == [False, False]


def test_force_backward_turns_everything_on():  # moved from test_compile.py
    plan = compile_text("force_backward: true\n" + BACKWARD)
    frozen = next(s for s in plan.steps if s.layer.name == "frozen")
    assert frozen.need_backward and frozen.layer.param_propagate_down == [True, True]


def test_force_backward_keeps_labels_and_layers_without_backward_out():
    steps = _steps(BACKWARD + 'layer { name: "t" type: "Threshold" bottom: "side" top: "t" }')
    propagate_need_backward(steps)
    prune_backward(steps)
    force_backward(steps)
    step = by_name(steps)
    assert step["side"].need_backward and step["side"].propagate_down == [True]
    assert step["frozen"].propagate_down == [True]
    assert step["loss"].propagate_down == [True, False]
    assert not step["t"].need_backward  # Threshold has no backward

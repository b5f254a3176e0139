"""Pass: wiring by blob name (file order, in place, duplicate tops, arity), inputs, outputs."""

import pytest

from netforge.errors import GraphError
from netforge.graph.instantiate import create_layers
from netforge.graph.wiring import automatic_top_name, check_arity, net_inputs, net_outputs, wire
from tests.graph.passes import (
    INPUT,
    LABEL,
    TWO_INPUTS,
    by_name,
    compile_text,
    context,
    param,
    wired,
)


def test_steps_carry_the_names_in_file_order():
    steps = wired(INPUT + LABEL + """
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              inner_product_param { num_output: 3 } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """)
    assert [(s.layer.name, s.bottom_names, s.top_names) for s in steps] == [
        ("in", [], ["data"]), ("lab", [], ["label"]), ("ip", ["data"], ["ip"]),
        ("loss", ["ip", "label"], ["loss"])]
    assert all(not s.bottoms and not s.tops for s in steps)  # blobs come from infer_shapes


def test_a_loss_layer_without_tops_gets_the_automatic_one():
    steps = by_name(wired(INPUT + LABEL + 'layer { name: "loss" type: "SoftmaxWithLoss" '
                          'bottom: "data" bottom: "label" }'))
    assert automatic_top_name("loss") == "(loss automatic)"
    assert steps["loss"].top_names == ["(loss automatic)"]
    assert net_outputs(list(steps.values())) == []  # never a net output


def test_in_place_is_the_same_name_at_the_same_index():
    steps = by_name(wired(INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n'
                          'layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }'))
    assert steps["r"].in_place(0) and not steps["s"].in_place(0)
    # the bottom's name at another index is a second producer, not in place
    net = param(INPUT + 'layer { name: "a" type: "ReLU" bottom: "data" top: "a" }\n'
                'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "data" top: "data" }')
    with pytest.raises(GraphError, match='Eltwise "e": top blob "data" is produced by multiple'):
        wire(net, create_layers(net, context()))


def test_in_place_is_refused_for_a_layer_that_cannot():
    net = param(INPUT + 'layer { name: "s" type: "Softmax" bottom: "data" top: "data" }')
    with pytest.raises(GraphError, match='Softmax "s" cannot compute in place '
                       '\\(top "data" is also its bottom\\)'):
        wire(net, create_layers(net, context()))


def test_a_second_producer_of_a_name_is_refused():
    net = param(INPUT + """
      layer { name: "a" type: "ReLU" bottom: "data" top: "x" }
      layer { name: "c" type: "TanH" bottom: "data" top: "x" }
    """)
    with pytest.raises(GraphError, match='TanH "c": top blob "x" is produced by multiple'):
        wire(net, create_layers(net, context()))


def test_wire_refuses_a_bottom_produced_below():
    net = param(INPUT + """
      layer { name: "r" type: "ReLU" bottom: "late" top: "r" }
      layer { name: "s" type: "ReLU" bottom: "data" top: "late" }
    """)
    with pytest.raises(GraphError, match='ReLU "r": unknown bottom blob "late" '
                       '\\(bottom index 0\\)'):
        wire(net, create_layers(net, context()))


def test_arity_messages():
    net = param(INPUT + LABEL + 'layer { name: "p" type: "Pooling" bottom: "data" '
                'bottom: "label" top: "p" pooling_param { kernel_size: 1 } }\n'
                'layer { name: "c" type: "Concat" top: "c" }\n'
                'layer { name: "l" type: "EuclideanLoss" bottom: "data" bottom: "label" '
                'top: "l1" top: "l2" }')
    pool, concat, loss = create_layers(net, context())[2:]
    check_arity(pool, 1, 1)
    with pytest.raises(GraphError, match='^Pooling "p" takes 1 bottom blob, got 2$'):
        check_arity(pool, 2, 1)
    with pytest.raises(GraphError, match='^Concat "c" takes at least 1 bottom blob, got 0$'):
        check_arity(concat, 0, 1)
    with pytest.raises(GraphError, match='^EuclideanLoss "l" takes at most 1 top blobs, '
                       'got 2$'):
        check_arity(loss, 2, 2)


def test_inputs_are_the_input_layers_tops_and_outputs_the_unread_tops_by_name():
    steps = wired(TWO_INPUTS + """
      layer { name: "z" type: "ReLU" bottom: "x" top: "zeta" }
      layer { name: "r" type: "ReLU" bottom: "zeta" top: "zeta" }
      layer { name: "a" type: "Sigmoid" bottom: "zeta" top: "alpha" }
    """)
    assert net_inputs(steps) == ["x", "y"]
    # zeta is read by a (after its in-place rewrite); y is never read
    assert net_outputs(steps) == ["alpha", "y"]


# -- through compile_net (moved from test_compile.py) --------------------------------------


def test_unknown_bottom_names_layer_and_blob():
    with pytest.raises(GraphError, match='layer "r" \\(ReLU\\): unknown bottom blob "nope"'):
        compile_text(INPUT + 'layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }')


def test_bottom_must_be_produced_above_file_order():
    with pytest.raises(GraphError, match='unknown bottom blob "late"'):
        compile_text(INPUT + """
          layer { name: "r" type: "ReLU" bottom: "late" top: "r" }
          layer { name: "s" type: "ReLU" bottom: "data" top: "late" }
        """)


def test_duplicate_top_is_refused():
    with pytest.raises(GraphError, match="produced by multiple sources"):
        compile_text(INPUT + """
          layer { name: "a" type: "ReLU" bottom: "data" top: "x" }
          layer { name: "b" type: "Sigmoid" bottom: "x" top: "x2" }
          layer { name: "c" type: "TanH" bottom: "x2" top: "x" }
        """)


def test_in_place_shares_the_blob_and_is_refused_where_unsafe():
    plan = compile_text(INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }')
    step = plan.steps[1]
    assert step.tops[0] is step.bottoms[0]
    with pytest.raises(GraphError, match="cannot compute in place"):
        compile_text(INPUT + 'layer { name: "s" type: "Softmax" bottom: "data" top: "data" }')


def test_arity_is_checked_centrally():
    with pytest.raises(GraphError, match='Pooling "p" takes 1 bottom blob, got 2'):
        compile_text(INPUT + LABEL + 'layer { name: "p" type: "Pooling" bottom: "data" '
                     'bottom: "label" top: "p" pooling_param { kernel_size: 1 } }')


def test_outputs_are_sorted_alphabetically():
    plan = compile_text(INPUT + """
      layer { name: "z" type: "ReLU" bottom: "data" top: "zeta" }
      layer { name: "a" type: "Sigmoid" bottom: "zeta" top: "alpha" }
      layer { name: "m" type: "TanH" bottom: "zeta" top: "mid" }
    """)
    assert plan.outputs == ["alpha", "mid"]

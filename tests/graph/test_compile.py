"""The whole pipeline: build_plan (upgrade → filter → graph passes) and compile_net.

Each pass has its own tests (test_splits, test_instantiate, test_wiring, test_params,
test_shapes, test_backward, test_memory_plan); here, what only the whole run shows.
"""

import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import ShapeError
from netforge.graph.compile import build_plan
from tests.graph.passes import INPUT, compile_text, context

# V1 ``layers`` with an input header: build_plan must upgrade before it filters.
V1_NET = """
name: "old"
input: "data" input_dim: 2 input_dim: 3 input_dim: 1 input_dim: 1
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip"
         inner_product_param { num_output: 2 } include { phase: TRAIN } }
layers { name: "ip_test" type: INNER_PRODUCT bottom: "data" top: "ip"
         inner_product_param { num_output: 5 } include { phase: TEST } }
layers { name: "relu" type: RELU bottom: "ip" top: "ip" }
"""


def test_build_plan_upgrades_then_filters_then_compiles():
    net = config.parse_text(V1_NET, pb.NetParameter(), "old.prototxt")
    before = net.SerializeToString()
    filtered, plan = build_plan(net, config.make_state("TRAIN"), context("TRAIN"), "old")
    assert net.SerializeToString() == before  # the caller's NetParameter is left alone
    assert [lp.name for lp in filtered.layer] == ["input", "ip", "relu"]
    assert filtered.state.phase == pb.TRAIN
    assert [(s.layer.name, s.layer.type) for s in plan.steps] == [
        ("input", "Input"), ("ip", "InnerProduct"), ("relu", "ReLU")]
    assert plan.blobs["ip"].shape == (2, 2) and plan.inputs == ["data"]
    _, test_plan = build_plan(net, config.make_state("TEST"), context("TEST"), "old")
    assert test_plan.blobs["ip"].shape == (2, 5)


def test_shape_error_names_layer_and_shapes():
    with pytest.raises(ShapeError, match='Eltwise "e": bottom "b" has shape'):
        compile_text("""
          layer { name: "i" type: "Input" top: "a" top: "b"
                  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
          layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" }
        """)


def test_plan_allocates_every_blob_once():
    plan = compile_text(INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n'
                        'layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }')
    assert list(plan.blobs) == ["data", "s"]


def test_the_plan_gathers_what_the_passes_found():
    plan = compile_text(INPUT + """
      layer { name: "lab" type: "Input" top: "label" input_param { shape { dim: 2 } } }
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              param { lr_mult: 1 } param { lr_mult: 2 } inner_product_param { num_output: 3 } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" }
    """, phase="TEST")
    assert plan.phase == "TEST" and plan.inputs == ["data", "label"] and plan.outputs == []
    assert [s.top_names for s in plan.steps][-1] == ["(loss automatic)"]
    assert [(p.layer_name, p.index, p.lr_mult) for p in plan.learnable] == [
        ("ip", 0, 1.0), ("ip", 1, 2.0)]
    assert list(plan.layer_params) == ["ip"]
    (top, weight), = plan.loss_tops
    assert top is plan.steps[-1].tops[0] and weight == 1.0
    assert plan.blobs["(loss automatic)"] is top

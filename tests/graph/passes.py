"""Running the graph passes by hand, up to the one a test looks at."""

import numpy as np

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.graph.compile import compile_net
from netforge.graph.instantiate import create_layers
from netforge.graph.params import assign_loss_weights
from netforge.graph.shapes import infer_shapes
from netforge.graph.splits import insert_splits
from netforge.graph.wiring import wire
from netforge.layers.base import LayerContext

INPUT = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
TWO_INPUTS = ('layer { name: "two" type: "Input" top: "x" top: "y" '
              "input_param { shape { dim: 2 } shape { dim: 2 } } }\n")
LABEL = ('layer { name: "lab" type: "Input" top: "label" '
         "input_param { shape { dim: 2 } } }\n")


def param(text: str) -> pb.NetParameter:
    return config.upgrade_net(config.parse_text(text, pb.NetParameter(), "t.prototxt"))


def context(phase: str = "TRAIN") -> LayerContext:
    return LayerContext(phase=phase, dtype=np.dtype(np.float64), rng=np.random.default_rng(0))


def compile_text(text: str, phase: str = "TRAIN"):
    """The plan ``compile_net`` builds for this prototxt text."""
    return compile_net(param(text), context(phase))


def wired(text: str, phase: str = "TRAIN"):
    """Steps after split insertion and wiring (names only, no blobs)."""
    net = insert_splits(param(text))
    return wire(net, create_layers(net, context(phase)))


def shaped(text: str, phase: str = "TRAIN"):
    """Steps with loss weights and blobs: (steps, blobs)."""
    steps = wired(text, phase)
    assign_loss_weights(steps)
    return steps, infer_shapes(steps, context(phase))


def by_name(steps) -> dict:
    return {step.layer.name: step for step in steps}

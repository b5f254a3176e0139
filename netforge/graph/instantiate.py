"""Pass: one Layer object per LayerParameter, with unique names and the net's phase."""

from __future__ import annotations

from netforge import netforge_pb2 as pb
from netforge.errors import GraphError
from netforge.layers import layer_class
from netforge.layers.base import Layer, LayerContext


def check_layer_names(net: pb.NetParameter) -> None:
    """Layer names must be unique: weights are copied, and layers looked up, by name."""
    seen: set[str] = set()
    for lp in net.layer:
        if lp.name in seen:
            raise GraphError(f'two layers are named "{lp.name}"; layer names must be unique')
        seen.add(lp.name)


def create_layers(net: pb.NetParameter, ctx: LayerContext) -> list[Layer]:
    """Construct each layer from its LayerParameter, in file order.

    A layer without its own ``phase`` gets the net's (Caffe sets it in Net::Init), written
    into ``net``'s LayerParameter, which the layer keeps as ``layer.param``. Constructors
    only read parameters; weights are drawn later, by ``setup`` (``shapes.infer_shapes``).
    """
    phase_value = pb.TRAIN if ctx.phase == "TRAIN" else pb.TEST
    layers = []
    for lp in net.layer:
        if not lp.HasField("phase"):
            lp.phase = phase_value
        layers.append(layer_class(lp.type, lp.name)(lp, ctx))
    return layers

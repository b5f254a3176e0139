"""Graph compile: a NetParameter becomes an execution plan, by Caffe's rules (Net::Init).

The whole pipeline, in order (``build_plan``); each pass is a function, tested alone:

  config.upgrade_net         older formats (V0/V1 ``layers``, input header) brought up to date
  config.filter_net          layers kept by the NetState (phase, level, stages)
  splits.insert_splits       a top read by several bottoms feeds a Split layer
  instantiate.check_layer_names / create_layers   one Layer object per LayerParameter
  wiring.wire                file order, in-place tops, duplicate tops, arity
  params.assign_loss_weights explicit loss_weight, or 1 on top 0 of loss layers
  shapes.infer_shapes        setup + reshape layer by layer (reshape declares its workspace,
                             bind_workspace allocates it); every blob allocated once
  params.share_params        params with the same ParamSpec.name share one blob
  backward.mark_need_backward  need-backward from lr_mult, loss reach, propagate_down
  memory_plan.share_scratch  layers' scratch buffers share one arena
  fusion.find_chains         conv/InnerProduct/BatchNorm + the in-place BatchNorm, Scale,
                             ReLU after them run as one pass (NETFORGE_NO_FUSION=1: off)
  arena.Arena.adopt          (run by the Net once built) every array moves into one arena

``compile_net`` runs the graph passes on a NetParameter already upgraded and filtered. A
forward-only net may later share activation memory too (``Plan.share_memory``).
"""

from __future__ import annotations

import logging
import os

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.graph import fusion, memory_plan
from netforge.graph.backward import mark_need_backward
from netforge.graph.instantiate import check_layer_names, create_layers
from netforge.graph.params import assign_loss_weights, loss_tops, share_params
from netforge.graph.plan import LayerStep, LearnableParam, Plan
from netforge.graph.shapes import infer_shapes
from netforge.graph.splits import insert_splits
from netforge.graph.wiring import net_inputs, net_outputs, wire
from netforge.layers.base import LayerContext

# Plan and LearnableParam live in graph.plan; importable from here as before.
__all__ = ["LayerStep", "LearnableParam", "Plan", "build_plan", "compile_net"]

log = logging.getLogger("netforge")


def build_plan(net: pb.NetParameter, state: pb.NetState, ctx: LayerContext,
               source: str = "net") -> tuple[pb.NetParameter, Plan]:
    """All of Net::Init for a NetParameter as read: upgrade, filter by ``state``, compile.
    ``net`` is left as it is. Returns (the filtered NetParameter, the plan)."""
    upgraded = pb.NetParameter()
    upgraded.CopyFrom(net)
    config.upgrade_net(upgraded, source)  # nothing to do for one loaded by load_net_param
    filtered = config.filter_net(upgraded, state, source)
    return filtered, compile_net(filtered, ctx)


def compile_net(net: pb.NetParameter, ctx: LayerContext) -> Plan:
    """Build the plan for an already filtered and upgraded NetParameter."""
    net = insert_splits(net)
    check_layer_names(net)
    steps = wire(net, create_layers(net, ctx))
    assign_loss_weights(steps)
    blobs = infer_shapes(steps, ctx)
    learnable, layer_params = share_params(steps)
    mark_need_backward(steps, net.force_backward)
    outputs = net_outputs(steps)
    for name in outputs:
        log.info("This network produces output %s", name)
    log.info("Network initialization done.")
    plan = Plan(net.name, ctx.phase, steps, blobs, net_inputs(steps), outputs, learnable,
                layer_params, loss_tops(steps))
    # Scratch that holds nothing between calls lives in one arena shared by all layers.
    before, after = memory_plan.share_scratch(plan)
    log.info("Layer scratch: %d bytes shared as %d", before, after)
    if os.environ.get("NETFORGE_NO_FUSION", "") != "1":
        plan.fused = fusion.find_chains(plan.steps)
    return plan

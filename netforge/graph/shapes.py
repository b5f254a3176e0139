"""Pass: shape inference and blob allocation (setup + reshape, layer by layer), and the
reshape helpers the plan re-runs when an input's shape changes (Caffe's Net::Reshape).

Each layer's ``setup`` runs once, in net order (it draws the weights from the net's
generator, so the order fixes which weights a seed gives), then ``reshape`` gives its top
shapes. A top that is in place keeps its bottom's shape; every other top becomes a fresh
Blob. Tops that alias their bottoms' memory (Split, Reshape, one-top Slice) are re-pointed by
the layer's ``share_tops`` after every (re)allocation.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from netforge.blob import Blob, shape_string
from netforge.errors import GraphError, ShapeError
from netforge.graph.user_names import split_aliases, user_names
from netforge.layers.base import Layer, LayerContext, WorkspaceSpec

if TYPE_CHECKING:  # plan.py imports this module
    from netforge.graph.plan import LayerStep

log = logging.getLogger("netforge")


def infer_shapes(steps: list[LayerStep], ctx: LayerContext) -> OrderedDict:
    """Set up every layer, infer its top shapes, allocate each blob once.

    Fills each step's ``bottoms`` and ``tops``; returns name -> Blob in creation order.
    Logs Caffe's per-layer lines (the loss weights must be assigned already).
    """
    blobs: OrderedDict[str, Blob] = OrderedDict()
    values = 0
    aliases = split_aliases(steps)
    for step in steps:
        layer = step.layer
        log.info("Creating Layer %s", layer.name)
        step.bottoms = [blobs[name] for name in step.bottom_names]
        for name in step.bottom_names:
            log.info("%s <- %s", layer.name, name)
        bottom_shapes = [b.shape for b in step.bottoms]
        with user_names(aliases):  # errors name the user's blobs, not inserted splits
            layer.setup(bottom_shapes)
            top_shapes = layer.reshape(bottom_shapes)
        bind_workspace(layer)
        check_top_count(layer, top_shapes, len(step.top_names))
        step.tops = []
        for j, (name, shape) in enumerate(zip(step.top_names, top_shapes, strict=True)):
            shape = tuple(int(d) for d in shape)
            if step.in_place(j):
                check_in_place_shape(layer, name, step.bottoms[j].shape, shape)
                top = step.bottoms[j]
            else:
                top = blobs[name] = Blob(shape, ctx.dtype, ctx.xp)
                values += top.count
            step.tops.append(top)
            log.info("%s -> %s", layer.name, name)
        layer.share_tops(step.bottoms, step.tops)
        log.info("Setting up %s", layer.name)
        for top, w in zip(step.tops, step.loss_weights, strict=True):
            log.info("Top shape: %s", shape_string(top.shape))
            if w:
                log.info("    with loss weight %g", w)
    log.info("Memory required for data: %d", values * ctx.dtype.itemsize)
    return blobs


def reshape_step(step: LayerStep) -> None:
    """Re-infer one layer's top shapes from its bottoms' current shapes; reallocate the tops
    whose shape changed and re-point aliasing ones."""
    if not step.bottoms:
        # Sources (Input, data layers, Parameter) keep their tops' shapes: as Caffe's Input
        # layer does, so that a caller's net.blobs[name].reshape(...) stands.
        return
    layer = step.layer
    shapes = layer.reshape([b.shape for b in step.bottoms])
    bind_workspace(layer)
    check_top_count(layer, shapes, len(step.tops))
    for j, (top, shape) in enumerate(zip(step.tops, shapes, strict=True)):
        shape = tuple(int(d) for d in shape)
        if j < len(step.bottoms) and top is step.bottoms[j]:  # in place: the bottom's shape
            check_in_place_shape(layer, step.top_names[j], top.shape, shape)
            continue
        top.reshape(shape)
    layer.share_tops(step.bottoms, step.tops)


def bind_workspace(layer: Layer) -> None:
    """Allocate the workspace ``layer.reshape`` declared (``Layer.declare``) and set the
    layer's attributes to it: fresh arrays after every reshape, as the layer used to make
    them itself (state keeps its values while its shape stands); the net's arena then takes
    them in with every other array (graph/arena.py)."""
    for attribute, layout in layer.workspace_layouts.items():
        setattr(layer, attribute,
                materialize(layout, layer.xp, getattr(layer, attribute, None)))


def materialize(layout, xp, current=None):
    """``layout`` with each WorkspaceSpec replaced by an array (see Layer.declare_layout)."""
    if isinstance(layout, WorkspaceSpec):
        if layout.state:
            if (current is not None and tuple(current.shape) == layout.shape
                    and current.dtype == layout.dtype):
                return current
            return xp.zeros(layout.shape, dtype=layout.dtype)
        return xp.empty(layout.shape, dtype=layout.dtype)
    if isinstance(layout, dict):
        return {key: materialize(item, xp) for key, item in layout.items()}
    if isinstance(layout, (list, tuple)):
        return type(layout)(materialize(item, xp) for item in layout)
    return layout


def reshare_tops(steps: list[LayerStep]) -> None:
    """Re-point every aliasing top (Split, Reshape, ...) at its bottom's current memory."""
    for step in steps:
        if step.bottoms:
            step.layer.share_tops(step.bottoms, step.tops)


def check_top_count(layer: Layer, top_shapes, n_tops: int) -> None:
    if len(top_shapes) != n_tops:
        raise GraphError(f"{layer.label} produced {len(top_shapes)} top shape(s) for {n_tops} tops")


def check_in_place_shape(layer: Layer, name: str, old: tuple, new: tuple) -> None:
    if new != old:
        raise ShapeError(f'{layer.label}: in-place top "{name}" would change shape {old} -> {new}')

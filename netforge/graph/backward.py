"""Pass: which layers run backward, and into which bottoms (Caffe's Net::Init rules).

1. ``propagate_need_backward``, in net order: a layer needs backward when a bottom needs a
   gradient or one of its params has ``lr_mult`` ≠ 0 (which also sets the layer's
   ``param_propagate_down``); ``propagate_down`` (none, or one per bottom) overrides the
   bottoms' flags; bottoms a layer declares non-differentiable (labels) never get one;
   a layer without a backward needs none.
2. ``prune_backward``, in reverse: a layer no loss depends on skips backward, and so does
   one whose every top's gradient is skipped by all its readers.
3. ``force_backward`` (NetParameter field 5): every layer that has a backward computes
   every differentiable bottom gradient and every param gradient.
"""

from __future__ import annotations

import logging

from netforge.errors import GraphError
from netforge.graph.params import param_spec
from netforge.graph.plan import LayerStep

log = logging.getLogger("netforge")


def mark_need_backward(steps: list[LayerStep], force: bool) -> None:
    """Set ``need_backward`` and ``propagate_down`` on every step (and the layer's own
    ``need_backward``, which lets it skip forward work only backward needs)."""
    propagate_need_backward(steps)
    prune_backward(steps)
    if force:
        force_backward(steps)
    for step in steps:
        step.layer.need_backward = step.need_backward


def propagate_need_backward(steps: list[LayerStep]) -> None:
    blob_needs: dict[str, bool] = {}
    for step in steps:
        layer, lp = step.layer, step.layer.param
        need = any(blob_needs.get(name, False) for name in step.bottom_names)
        for k in range(len(layer.blobs)):
            grad_on = param_spec(lp, k).lr_mult != 0
            layer.param_propagate_down[k] = grad_on
            need |= grad_on
        n_bottoms = len(step.bottom_names)
        if lp.propagate_down and n_bottoms and len(lp.propagate_down) != n_bottoms:
            raise GraphError(
                f"{layer.label}: propagate_down must have one value per bottom "
                f"({n_bottoms}), got {len(lp.propagate_down)}"
            )
        propagate = []
        for j, name in enumerate(step.bottom_names):
            flag = lp.propagate_down[j] if lp.propagate_down else blob_needs.get(name, False)
            propagate.append(bool(flag) and j not in layer.no_gradient_bottoms)
        if not layer.has_backward:
            need = False
        if need:
            for name in step.top_names:
                blob_needs[name] = True
        step.need_backward = need
        step.propagate_down = propagate


def prune_backward(steps: list[LayerStep]) -> None:
    """Caffe's pruning: walk back from the losses; layers no loss depends on skip backward."""
    under_loss: set[str] = set()
    skip_backprop: set[str] = set()
    for step in reversed(steps):
        contributes = False
        skip = True
        for name, w in zip(step.top_names, step.loss_weights, strict=True):
            if w or name in under_loss:
                contributes = True
            if name not in skip_backprop:
                skip = False
        if step.need_backward and skip:
            step.need_backward = False
            step.propagate_down = [False] * len(step.propagate_down)
        if not contributes:
            step.need_backward = False
        for j, name in enumerate(step.bottom_names):
            if contributes:
                under_loss.add(name)
            else:
                step.propagate_down[j] = False
            if not step.propagate_down[j]:
                skip_backprop.add(name)
        verdict = "needs" if step.need_backward else "does not need"
        log.info("%s %s backward computation.", step.layer.name, verdict)


def force_backward(steps: list[LayerStep]) -> None:
    for step in steps:
        if not step.layer.has_backward:
            continue
        step.need_backward = True
        step.propagate_down = [
            j not in step.layer.no_gradient_bottoms for j in range(len(step.bottom_names))
        ]
        step.layer.param_propagate_down = [True] * len(step.layer.blobs)

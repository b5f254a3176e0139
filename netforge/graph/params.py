"""Passes: loss weights per top, and parameter blobs shared by ParamSpec name.

Loss weights (Caffe): zero or one ``loss_weight`` per top; without any, a loss layer puts 1
on top 0 and every other top gets 0. The net's loss is Σ over tops of Σ(top · weight).

Sharing: params with the same non-empty ``param { name }`` share one blob (data and diff);
the first layer naming it owns it and is the only one the solver updates. Shapes must match
(STRICT, the default) or only counts (PERMISSIVE); ``lr_mult`` and ``decay_mult`` must agree
where both say them, and one that only a later sharer says applies to the owner.
"""

from __future__ import annotations

from collections import OrderedDict

from netforge import netforge_pb2 as pb
from netforge.blob import Blob
from netforge.errors import GraphError, ShapeError
from netforge.graph.plan import LayerStep, LearnableParam


def assign_loss_weights(steps: list[LayerStep]) -> None:
    """Set each step's ``loss_weights``, one per top."""
    for step in steps:
        layer, explicit = step.layer, step.layer.param.loss_weight
        n_tops = len(step.top_names)
        if explicit and len(explicit) != n_tops:
            raise GraphError(
                f"{layer.label} has {len(explicit)} loss_weight value(s) for {n_tops} top(s)"
            )
        step.loss_weights = list(explicit) or [
            1.0 if (layer.is_loss and j == 0) else 0.0 for j in range(n_tops)
        ]


def loss_tops(steps: list[LayerStep]) -> list[tuple[Blob, float]]:
    """(top blob, weight) for every top with a non-zero loss weight, in net order."""
    return [(top, w) for step in steps
            for top, w in zip(step.tops, step.loss_weights, strict=True) if w]


def param_spec(layer_param: pb.LayerParameter, k: int) -> pb.ParamSpec:
    """The ``param {}`` entry for parameter blob ``k`` (defaults where the file gives none)."""
    return layer_param.param[k] if k < len(layer_param.param) else pb.ParamSpec()


def share_params(steps: list[LayerStep]) -> tuple[list[LearnableParam], OrderedDict]:
    """Resolve parameter sharing once every layer has made its blobs (``setup``).

    Returns (the learnable params, owners only, in net order; layer name -> that layer's
    param blobs, for layers that have any). A sharing layer's ``blobs[k]`` becomes the
    owner's Blob.
    """
    owners: dict[str, tuple[LearnableParam, pb.ParamSpec]] = {}
    learnable: list[LearnableParam] = []
    layer_params: OrderedDict[str, list[Blob]] = OrderedDict()
    for step in steps:
        layer, lp = step.layer, step.layer.param
        if len(lp.param) > len(layer.blobs):
            raise GraphError(
                f"{layer.label} has {len(lp.param)} param {{}} entries but only "
                f"{len(layer.blobs)} parameter blob(s)"
            )
        for k in range(len(layer.blobs)):
            spec = param_spec(lp, k)
            owner = owners.get(spec.name) if spec.name else None
            if owner is None:
                entry = LearnableParam(layer.blobs[k], layer.name, k, spec.lr_mult,
                                       spec.decay_mult, spec.name)
                learnable.append(entry)
                if spec.name:
                    owners[spec.name] = (entry, spec)
            else:
                layer.blobs[k] = shared_blob(layer, k, spec, *owner)
        if layer.blobs:
            layer_params[lp.name] = layer.blobs
    return learnable, layer_params


def shared_blob(layer, k: int, spec: pb.ParamSpec, owner: LearnableParam,
                owner_spec: pb.ParamSpec) -> Blob:
    """The owner's blob, for ``layer``'s param ``k`` that shares it: shapes (or counts)
    checked, multipliers reconciled."""
    name, mine = spec.name, layer.blobs[k]
    if spec.share_mode == pb.ParamSpec.PERMISSIVE:
        if mine.count != owner.blob.count:
            raise ShapeError(
                f'{layer.label}: shared param "{name}" has {mine.count} values here but '
                f"{owner.blob.count} in its owner (layer \"{owner.layer_name}\")"
            )
    elif mine.shape != owner.blob.shape:
        raise ShapeError(
            f'{layer.label}: shared param "{name}" has shape {mine.shape} here but '
            f'{owner.blob.shape} in its owner (layer "{owner.layer_name}")'
        )
    for attr in ("lr_mult", "decay_mult"):
        if spec.HasField(attr):
            if owner_spec.HasField(attr) and getattr(owner_spec, attr) != getattr(spec, attr):
                raise GraphError(f'{layer.label}: shared param "{name}" has mismatched {attr}')
            if not owner_spec.HasField(attr):
                setattr(owner, attr, getattr(spec, attr))
    return owner.blob

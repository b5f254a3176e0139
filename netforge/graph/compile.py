"""Graph compile: a filtered NetParameter becomes an execution plan, by Caffe's rules.

The passes, in order (each a small function, tested alone):
  insert_splits      a top read by several bottoms gets a Split layer (Caffe's naming)
  wire               file order checked, in-place tops resolved, duplicate tops refused
  instantiate        layer objects created; arity checked; setup + reshape infer shapes
  share_params       params with the same ParamSpec.name share one blob
  loss weights       explicit loss_weight, or 1 on top 0 of loss layers
  mark_backward      need-backward from lr_mult, loss reach and propagate_down
The plan allocates every blob once; forward/backward then only index into it. A forward-only
net may then share memory between activations that are never alive together
(``Plan.share_memory``, see ``netforge.memory_plan``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from netforge import netforge_pb2 as pb
from netforge.blob import Blob, shape_string
from netforge.errors import GraphError, ShapeError
from netforge.graph import memory_plan
from netforge.graph.memory_plan import MemoryPlan
from netforge.layers import layer_class
from netforge.layers.base import Layer, LayerContext

log = logging.getLogger("netforge")


# -- pass 1: split insertion -----------------------------------------------------------------


def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob: str, layer: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(net: pb.NetParameter) -> pb.NetParameter:
    """A copy of ``net`` where every top consumed more than once feeds a Split layer.

    A top that carries a non-zero explicit loss_weight counts as one more consumer; the weight
    moves to the split's first top, which no bottom reads.
    """
    last_producer: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(net.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise GraphError(
                    f'layer "{layer.name}" ({layer.type}): unknown bottom blob "{name}" '
                    f"(bottom index {j}); no layer above produces it"
                )
            source = last_producer[name]
            source_of[(i, j)] = source
            consumers[source] = consumers.get(source, 0) + 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            loss_weight[(i, j)] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[(i, j)] = consumers.get((i, j), 0) + 1

    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(net.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            source = source_of[(i, j)]
            if consumers.get(source, 0) > 1:
                k = next_split.get(source, 0)
                next_split[source] = k + 1
                producer = net.layer[source[0]].name
                new.bottom[j] = split_blob_name(name, producer, source[1], k)
        for j, name in enumerate(layer.top):
            count = consumers.get((i, j), 0)
            if count <= 1:
                continue
            weight = loss_weight.get((i, j), 0.0)
            split = out.layer.add(name=split_layer_name(name, layer.name, j), type="Split")
            split.bottom.append(name)
            for k in range(count):
                split.top.append(split_blob_name(name, layer.name, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                new.ClearField("loss_weight")
                next_split[(i, j)] = next_split.get((i, j), 0) + 1
    return out


# -- the plan --------------------------------------------------------------------------------


@dataclass
class LearnableParam:
    """A parameter blob the solver updates (owners only; shared copies point at it)."""

    blob: Blob
    layer_name: str
    index: int
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    name: str = ""


@dataclass
class LayerStep:
    layer: Layer
    bottom_names: list[str]
    top_names: list[str]
    bottoms: list[Blob]
    tops: list[Blob]
    loss_weights: list[float]
    need_backward: bool = False
    propagate_down: list[bool] = field(default_factory=list)


@dataclass
class Plan:
    name: str
    phase: str
    steps: list[LayerStep]
    blobs: OrderedDict  # name -> Blob, in creation order
    inputs: list[str]
    outputs: list[str]
    learnable: list[LearnableParam]
    layer_params: OrderedDict  # layer name -> list of param Blobs (layers with params only)
    loss_tops: list[tuple[Blob, float]]  # (top blob, loss weight) for weighted tops
    memory: MemoryPlan | None = None  # set by share_memory (forward-only nets)

    def reshape(self, start: int = 0) -> None:
        """Re-run shape inference for layers ``start``.. with the current bottom shapes
        (Caffe's Net::Reshape), reallocating only the blobs whose shapes changed.

        Called after a caller reshaped an input blob (pycaffe's
        ``net.blobs["data"].reshape(...); net.reshape()``), and by the net during forward
        after a layer with ``dynamic_top_shapes`` (Filter) changed its tops' shapes. A plan
        that shares memory gets private blobs back first and is planned again after.
        """
        memory = self.memory
        if memory is not None:
            self._unshare(memory)
        for step in self.steps[start:]:
            _reshape_step(step)
        if memory is not None:
            self.share_memory(memory.keep)
        else:
            memory_plan.share_scratch(self)  # the layers' new workspaces

    def share_memory(self, keep=()) -> MemoryPlan | None:
        """Let activations that are never alive together share memory, and layers share one
        scratch arena (``netforge.memory_plan``). Only for nets that never run backward;
        outputs, inputs and the blobs named in ``keep`` stay readable after forward."""
        self.memory = memory_plan.share_memory(self, keep, reshare_tops)
        return self.memory

    def check_readable(self, names) -> None:
        """Refuse to hand out blobs whose memory a later layer reuses (see share_memory)."""
        if self.memory is None:
            return
        stale = [name for name in names if name in self.memory.shared_blobs]
        if stale:
            raise GraphError(
                f'net "{self.name}" shares memory between activations (reuse_memory=True): '
                f"blob(s) {', '.join(stale)} do not keep their values after forward; name "
                "them in keep_blobs to read them")

    def check_resume(self, first: int) -> None:
        """Refuse a forward from step ``first`` that would read shared (overwritten) blobs
        written before it."""
        earlier = {name for step in self.steps[:first] for name in step.top_names}
        self.check_readable(sorted({name for step in self.steps[first:]
                                    for name in step.bottom_names if name in earlier}))

    def _unshare(self, memory: MemoryPlan) -> None:
        for name in memory.shared_blobs:
            blob = self.blobs[name]
            if blob.data.base is not None:  # still a view into a slot
                blob.data = blob.xp.empty(blob.shape, dtype=blob.dtype)
        reshare_tops(self)
        self.memory = None


def reshare_tops(plan: Plan) -> None:
    """Re-point every aliasing top (Split, Reshape, ...) at its bottom's current memory."""
    for step in plan.steps:
        if step.bottoms:
            _share_tops(step.layer, step.bottoms, step.tops)


def _share_tops(layer: Layer, bottoms: list[Blob], tops: list[Blob]) -> None:
    """Point aliasing tops at their bottoms' memory; redone after every (re)allocation."""
    if layer.type == "Split":
        for top in tops:
            top.share_data(bottoms[0])  # a split forwards by aliasing, it never copies
    layer.share_tops(bottoms, tops)


def _reshape_step(step: LayerStep) -> None:
    if not step.bottoms:
        # Sources (Input, data layers, Parameter) keep their tops' shapes: as Caffe's Input
        # layer does, so that a caller's net.blobs[name].reshape(...) stands.
        return
    layer = step.layer
    shapes = layer.reshape([b.shape for b in step.bottoms])
    _check_top_count(layer, shapes, len(step.tops))
    for j, (top, shape) in enumerate(zip(step.tops, shapes, strict=True)):
        shape = tuple(int(d) for d in shape)
        if j < len(step.bottoms) and top is step.bottoms[j]:  # in place: the bottom's shape
            _check_in_place_shape(layer, step.top_names[j], top.shape, shape)
            continue
        top.reshape(shape)
    _share_tops(layer, step.bottoms, step.tops)


def _check_top_count(layer: Layer, top_shapes, n_tops: int) -> None:
    if len(top_shapes) != n_tops:
        raise GraphError(f"{layer.label} produced {len(top_shapes)} top shape(s) for {n_tops} tops")


def _check_in_place_shape(layer: Layer, name: str, old: tuple, new: tuple) -> None:
    if new != old:
        raise ShapeError(f'{layer.label}: in-place top "{name}" would change shape {old} -> {new}')


def _check_arity(layer: Layer, n_bottom: int, n_top: int) -> None:
    def check(kind, n, exact, lo, hi):
        noun = "blob" if (exact or lo or 0) == 1 else "blobs"
        if exact is not None and n != exact:
            raise GraphError(f"{layer.label} takes {exact} {kind} {noun}, got {n}")
        if n < lo:
            raise GraphError(f"{layer.label} takes at least {lo} {kind} {noun}, got {n}")
        if hi is not None and n > hi:
            raise GraphError(f"{layer.label} takes at most {hi} {kind} blobs, got {n}")

    check("bottom", n_bottom, layer.num_bottoms, layer.min_bottoms, layer.max_bottoms)
    check("top", n_top, layer.num_tops, layer.min_tops, layer.max_tops)


def compile_net(net: pb.NetParameter, ctx: LayerContext) -> Plan:
    """Build the plan for an already filtered and upgraded NetParameter."""
    net = insert_splits(net)
    phase_value = pb.TRAIN if ctx.phase == "TRAIN" else pb.TEST
    blobs: OrderedDict[str, Blob] = OrderedDict()
    available: set[str] = set()
    blob_need_backward: dict[str, bool] = {}
    steps: list[LayerStep] = []
    inputs: list[str] = []
    param_owner: dict[str, tuple[LearnableParam, pb.ParamSpec]] = {}
    learnable: list[LearnableParam] = []
    layer_params: OrderedDict[str, list[Blob]] = OrderedDict()
    memory = 0
    seen_names: set[str] = set()

    for lp in net.layer:
        if lp.name in seen_names:
            raise GraphError(f'two layers are named "{lp.name}"; layer names must be unique')
        seen_names.add(lp.name)
        if not lp.HasField("phase"):
            lp.phase = phase_value
        layer = layer_class(lp.type, lp.name)(lp, ctx)
        top_names = list(lp.top)
        if layer.is_loss and not top_names:
            top_names = [f"({lp.name} automatic)"]
        _check_arity(layer, len(lp.bottom), len(top_names))
        log.info("Creating Layer %s", lp.name)

        bottoms = []
        for j, name in enumerate(lp.bottom):
            if name not in blobs:
                raise GraphError(
                    f'{layer.label}: unknown bottom blob "{name}" (bottom index {j}); '
                    "no layer above produces it"
                )
            available.discard(name)
            bottoms.append(blobs[name])
            log.info("%s <- %s", lp.name, name)

        bottom_shapes = [b.shape for b in bottoms]
        layer.setup(bottom_shapes)
        top_shapes = layer.reshape(bottom_shapes)
        _check_top_count(layer, top_shapes, len(top_names))

        tops = []
        for j, name in enumerate(top_names):
            shape = tuple(int(d) for d in top_shapes[j])
            if j < len(lp.bottom) and name == lp.bottom[j]:
                if not layer.in_place_ok:
                    raise GraphError(
                        f'{layer.label} cannot compute in place (top "{name}" is also its bottom)'
                    )
                _check_in_place_shape(layer, name, bottoms[j].shape, shape)
                top = bottoms[j]
            elif name in blobs:
                raise GraphError(
                    f'{layer.label}: top blob "{name}" is produced by multiple sources '
                    "(only an in-place layer may reuse its bottom's name)"
                )
            else:
                top = Blob(shape, ctx.dtype, ctx.xp)
                blobs[name] = top
                memory += top.count
            tops.append(top)
            if not name.endswith(" automatic)"):
                available.add(name)
            log.info("%s -> %s", lp.name, name)
            if lp.type == "Input":
                inputs.append(name)

        _share_tops(layer, bottoms, tops)

        # Loss weights: explicit ones, else 1 on top 0 of loss layers.
        if lp.loss_weight and len(lp.loss_weight) != len(top_names):
            raise GraphError(
                f"{layer.label} has {len(lp.loss_weight)} loss_weight value(s) "
                f"for {len(top_names)} top(s)"
            )
        weights = list(lp.loss_weight) or [
            1.0 if (layer.is_loss and j == 0) else 0.0 for j in range(len(top_names))
        ]
        log.info("Setting up %s", lp.name)
        for top, w in zip(tops, weights, strict=True):
            log.info("Top shape: %s", shape_string(top.shape))
            if w:
                log.info("    with loss weight %g", w)

        # Parameters: lr_mult decides param gradients; named params are shared.
        if len(lp.param) > len(layer.blobs):
            raise GraphError(
                f"{layer.label} has {len(lp.param)} param {{}} entries but only "
                f"{len(layer.blobs)} parameter blob(s)"
            )
        need_backward = any(blob_need_backward.get(n, False) for n in lp.bottom)
        for k in range(len(layer.blobs)):
            spec = lp.param[k] if k < len(lp.param) else pb.ParamSpec()
            grad_on = spec.lr_mult != 0
            layer.param_propagate_down[k] = grad_on
            need_backward |= grad_on
            _append_param(layer, k, spec, param_owner, learnable)
        if layer.blobs:
            layer_params[lp.name] = layer.blobs

        propagate = []
        for j, name in enumerate(lp.bottom):
            flag = blob_need_backward.get(name, False)
            if lp.propagate_down:
                if len(lp.propagate_down) != len(lp.bottom):
                    raise GraphError(
                        f"{layer.label}: propagate_down must have one value per bottom "
                        f"({len(lp.bottom)}), got {len(lp.propagate_down)}"
                    )
                flag = lp.propagate_down[j]
            propagate.append(bool(flag) and j not in layer.no_gradient_bottoms)
        if not layer.has_backward:
            need_backward = False
        if need_backward:
            for name in top_names:
                blob_need_backward[name] = True
        steps.append(
            LayerStep(layer, list(lp.bottom), top_names, bottoms, tops, weights,
                      need_backward, propagate)
        )
    log.info("Memory required for data: %d", memory * ctx.dtype.itemsize)

    _mark_backward(steps, net.force_backward)
    for step in steps:
        step.layer.need_backward = step.need_backward
    outputs = sorted(available)
    for name in outputs:
        log.info("This network produces output %s", name)
    loss_tops = [
        (top, w) for step in steps for top, w in zip(step.tops, step.loss_weights, strict=True) if w
    ]
    log.info("Network initialization done.")
    plan = Plan(net.name, ctx.phase, steps, blobs, inputs, outputs, learnable, layer_params,
                loss_tops)
    # Workspaces that hold nothing between calls live in one arena shared by all layers.
    before, after = memory_plan.share_scratch(plan)
    log.info("Layer scratch: %d bytes shared as %d", before, after)
    return plan


def _append_param(layer: Layer, k: int, spec: pb.ParamSpec, owners: dict, learnable: list):
    name = spec.name
    if not name or name not in owners:
        entry = LearnableParam(layer.blobs[k], layer.name, k, spec.lr_mult, spec.decay_mult, name)
        learnable.append(entry)
        if name:
            owners[name] = (entry, spec)
        return
    owner, owner_spec = owners[name]
    mine = layer.blobs[k]
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
    layer.blobs[k] = owner.blob


def _mark_backward(steps: list[LayerStep], force_backward: bool) -> None:
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
    if force_backward:
        for step in steps:
            if not step.layer.has_backward:
                continue
            step.need_backward = True
            step.propagate_down = [
                j not in step.layer.no_gradient_bottoms for j in range(len(step.bottom_names))
            ]
            step.layer.param_propagate_down = [True] * len(step.layer.blobs)

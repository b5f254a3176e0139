"""Pass: wire layers together by blob name, by Caffe's rules, before any shape is known.

- file order: every bottom is produced by a layer above;
- in place: top ``j`` named like bottom ``j`` is that blob (ReLU/Dropout/BatchNorm idiom),
  refused for layers that cannot compute in place;
- any other reuse of a produced name is refused ("produced by multiple sources");
- arity: the bottom and top counts each layer class declares;
- a loss layer without tops gets one, ``(<layer> automatic)``;
- the net's inputs (Input layers' tops) and outputs (tops no bottom reads, sorted by name,
  as Caffe's std::set orders them).
"""

from __future__ import annotations

from netforge import netforge_pb2 as pb
from netforge.errors import GraphError
from netforge.graph.plan import LayerStep
from netforge.layers.base import Layer

AUTOMATIC_SUFFIX = " automatic)"


def automatic_top_name(layer_name: str) -> str:
    """The top Caffe gives a loss layer whose prototxt names none."""
    return f"({layer_name}{AUTOMATIC_SUFFIX}"


def check_arity(layer: Layer, n_bottom: int, n_top: int) -> None:
    """The bottom and top counts the layer class declares (checked here, never in layers)."""
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


def wire(net: pb.NetParameter, layers: list[Layer]) -> list[LayerStep]:
    """One LayerStep per layer (names only; blobs come from ``shapes.infer_shapes``)."""
    produced: set[str] = set()
    steps = []
    for lp, layer in zip(net.layer, layers, strict=True):
        top_names = list(lp.top)
        if layer.is_loss and not top_names:
            top_names = [automatic_top_name(lp.name)]
        check_arity(layer, len(lp.bottom), len(top_names))
        for j, name in enumerate(lp.bottom):
            if name not in produced:
                raise GraphError(
                    f'{layer.label}: unknown bottom blob "{name}" (bottom index {j}); '
                    "no layer above produces it"
                )
        step = LayerStep(layer, list(lp.bottom), top_names)
        for j, name in enumerate(top_names):
            if step.in_place(j):
                if not layer.in_place_ok:
                    raise GraphError(
                        f'{layer.label} cannot compute in place (top "{name}" is also its bottom)'
                    )
            elif name in produced:
                raise GraphError(
                    f'{layer.label}: top blob "{name}" is produced by multiple sources '
                    "(only an in-place layer may reuse its bottom's name)"
                )
            produced.add(name)
        steps.append(step)
    return steps


def net_inputs(steps: list[LayerStep]) -> list[str]:
    """The tops of the Input layers, in order: what a caller feeds."""
    return [name for step in steps if step.layer.param.type == "Input"
            for name in step.top_names]


def net_outputs(steps: list[LayerStep]) -> list[str]:
    """Tops that no later bottom reads (automatic loss tops aside), sorted by name."""
    available: set[str] = set()
    for step in steps:
        available.difference_update(step.bottom_names)
        available.update(name for name in step.top_names
                         if not name.endswith(AUTOMATIC_SUFFIX))
    return sorted(available)

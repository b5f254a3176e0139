"""The layer contract shared by every layer.

setup (read params, create parameter blobs once) -> reshape (pure shape inference: the top
shapes, and the workspace the layer needs declared with ``declare``/``declare_dict``; it
allocates nothing) -> forward (write tops) -> backward (write bottom diffs, accumulate param
diffs). The plan allocates what reshape declared (graph/shapes.py ``bind_workspace``) and
moves it with every other array into the net's arena (graph/arena.py).

Arity and in-place safety are declared as class attributes and checked centrally by the
graph compiler, never inside each layer. What memory a layer lends to the graph's memory plan
is declared too (``Layer.scratch_buffers``), never found by attribute name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netforge.blob import Blob
from netforge.errors import ConfigError, ShapeError, layer_label
from netforge.files import resolve_file
from netforge.fillers import fill
from netforge.ops.random import RandomStream, stream_id


@dataclass
class LayerContext:
    """What a layer may know about the net it lives in."""

    phase: str = "TRAIN"  # "TRAIN" or "TEST"
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    xp: object = np
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng())
    base_dirs: tuple[Path, ...] = ()  # where relative paths in the net file may live
    # The Philox key of the net's counter-based streams (Dropout, stochastic pooling): see
    # ops/random.py. The solver derives it from random_seed and the net's index.
    random_key: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class WorkspaceSpec:
    """One workspace array a layer's ``reshape`` declares; the plan allocates it.

    ``name`` says where the layer reads it (``x_norm``, ``ws.tmp``, ``workspaces[0][1].col``).
    ``kept_for_backward``: forward leaves in it what backward reads (BatchNorm's x_norm);
    otherwise it holds nothing from one call to the next. ``state``: it carries values across
    calls (a recurrent carry): zeros when first made or when its shape changes, kept
    otherwise."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    kept_for_backward: bool = False
    state: bool = False


def workspace_layout(name: str, layout, kept_for_backward=()):
    """A layout of WorkspaceSpecs from a kernel's: lists and tuples kept as they are (ints in
    them too), each dict a ``*_workspace_shapes`` spec (array name -> (shape, dtype))."""
    if isinstance(layout, dict):
        return {key: WorkspaceSpec(f"{name}.{key}", tuple(int(d) for d in shape),
                                   np.dtype(dtype), key in kept_for_backward)
                for key, (shape, dtype) in layout.items()}
    if isinstance(layout, (list, tuple)):
        return type(layout)(workspace_layout(f"{name}[{i}]", item, kept_for_backward)
                            for i, item in enumerate(layout))
    return layout


def layout_specs(layout) -> list[WorkspaceSpec]:
    """The WorkspaceSpecs in a layout, in order."""
    if isinstance(layout, WorkspaceSpec):
        return [layout]
    if isinstance(layout, dict):
        return [spec for item in layout.values() for spec in layout_specs(item)]
    if isinstance(layout, (list, tuple)):
        return [spec for item in layout for spec in layout_specs(item)]
    return []


@dataclass(frozen=True)
class ScratchBuffer:
    """One named array of a layer's workspace that the graph's memory plan may place in
    memory shared with other layers' scratch (netforge.graph.memory_plan).

    The layer reads it only as ``workspace[name]`` and keeps no other reference to the array,
    so the plan may replace it (``place``) by a view of the same shape and dtype into shared
    memory. ``kept_for_backward``: the buffer carries what forward wrote to the backward
    after it (Convolution's columns), so only a net that never runs backward may share it;
    otherwise it holds nothing from one call (forward or backward) to the next.
    """

    workspace: dict
    name: str
    kept_for_backward: bool = False

    @property
    def array(self):
        return self.workspace[self.name]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def place(self, array) -> None:
        """Hand the layer ``array`` (same shape and dtype) in place of its own buffer."""
        self.workspace[self.name] = array


def scratch_in(workspace: dict, names=None, kept_for_backward=()) -> list[ScratchBuffer]:
    """Scratch declarations for the arrays of ``workspace`` named in ``names`` (default all,
    in the dict's order; names it lacks are skipped), those in ``kept_for_backward``
    flagged so."""
    names = list(workspace) if names is None else [n for n in names if n in workspace]
    return [ScratchBuffer(workspace, name, name in kept_for_backward) for name in names]


class Layer:
    """Base class. Subclasses set the arity attributes and override the four methods."""

    type = "Layer"
    num_bottoms: int | None = None  # exact count, when fixed
    min_bottoms = 0
    max_bottoms: int | None = None
    num_tops: int | None = None
    min_tops = 0
    max_tops: int | None = None
    in_place_ok = False
    # Loss layers put loss_weight 1 on top 0 unless the prototxt says otherwise.
    is_loss = False
    # Bottoms that must never receive a gradient (e.g. labels), by index.
    no_gradient_bottoms: tuple[int, ...] = ()

    def __init__(self, param, ctx: LayerContext):
        self.param = param
        self.name = param.name
        self.ctx = ctx
        # LayerParameter.phase overrides the net's phase for this layer when it is set.
        if param.HasField("phase"):
            self.phase = "TEST" if param.phase == 1 else "TRAIN"
        else:
            self.phase = ctx.phase
        self.xp = ctx.xp
        self.dtype = ctx.dtype
        self.blobs: list[Blob] = []  # learnable (or persistent) parameter blobs
        self.param_propagate_down: list[bool] = []
        # What reshape declared: attribute -> a WorkspaceSpec, None, or a layout of them
        # (``declare_layout``); the plan allocates it and sets the attributes.
        self.workspace_layouts: dict[str, object] = {}

    # -- the contract -------------------------------------------------------------------------
    def setup(self, bottom_shapes: list[tuple[int, ...]]) -> None:
        """Read the layer's parameters and create parameter blobs (once)."""

    def reshape(self, bottom_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Top shapes for these bottom shapes; declare workspaces (``declare``), allocate
        nothing. Raise ShapeError."""
        raise NotImplementedError

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        raise NotImplementedError

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        """Write bottom diffs where propagate_down; accumulate param diffs."""

    has_backward = True
    # Set by the graph compiler: whether the net will ever call this layer's backward. A layer
    # may skip forward work that only backward needs (MAX pooling's argmax) when it is False.
    need_backward = True
    # Tops whose shapes depend on bottom *values* (Filter) or are set by user code (Python):
    # such a layer may reshape its tops inside forward, and the net then reshapes the layers
    # after it (see Plan.reshape).
    dynamic_top_shapes = False

    def backward_reads(self, bottoms: list[Blob], tops: list[Blob]) -> tuple[tuple[int, ...],
                                                                              tuple[int, ...]]:
        """(bottom indices, top indices) whose *data* this layer's backward reads, besides
        its tops' diffs (what it keeps itself, like a mask or a copy, does not count). The
        training-memory plan (netforge.graph.train_memory) lets an activation that no
        backward reads share memory after its last forward reader. Asked only of layers the
        net runs backward for. Default: every bottom and top, safe for a layer that does not
        say; an override must name every blob its backward touches the data of."""
        return tuple(range(len(bottoms))), tuple(range(len(tops)))

    def share_tops(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        """Called by the plan each time it (re)allocates this layer's tops. A layer whose
        tops alias bottom memory instead of copying (Reshape, a one-top Slice) points them
        here. Default: nothing."""

    def scratch_buffers(self) -> list[ScratchBuffer]:
        """The workspace arrays (declared by ``reshape``) this layer lends to the memory
        plan, which may put them in memory shared with other layers' scratch: only one
        layer runs at a time. The plan asks again after every reshape. Buffers of one layer
        never overlap one another. Default: none; a layer keeps all its workspaces private
        until it declares them here (see ScratchBuffer for what a buffer must obey)."""
        return []

    # -- helpers for subclasses ---------------------------------------------------------------
    @property
    def label(self) -> str:
        return layer_label(self.type, self.name)

    def add_param(self, shape, filler_param) -> Blob:
        """Create a parameter blob initialised by ``filler_param`` (a FillerParameter)."""
        blob = Blob(shape, self.dtype, self.xp)
        try:
            values = fill(filler_param, shape, self.ctx.rng, self.dtype)
        except ConfigError as exc:
            raise ConfigError(f"{self.label}: {exc}") from None
        blob.data[...] = self.xp.asarray(values)
        self.blobs.append(blob)
        self.param_propagate_down.append(True)
        return blob

    def random_stream(self) -> RandomStream:
        """This layer's counter-based stream (``self.random``; saved in snapshots): keyed by
        the net's key, told apart from other layers' by the layer name."""
        self.random = RandomStream(self.ctx.random_key, stream_id(self.name), self.xp)
        return self.random

    def declare(self, attribute: str, shape, dtype=None, *, kept_for_backward: bool = False,
                state: bool = False) -> None:
        """Ask the plan for ``self.<attribute>``: an array of ``shape`` and ``dtype`` (default
        the net's), bound after reshape; ``shape`` None: the attribute is None."""
        self.workspace_layouts[attribute] = None if shape is None else WorkspaceSpec(
            attribute, tuple(int(d) for d in shape), np.dtype(dtype or self.dtype),
            kept_for_backward, state)

    def declare_dict(self, attribute: str, spec, *, kept_for_backward=()) -> None:
        """Ask the plan for ``self.<attribute>``: a dict of arrays from a kernel's
        ``*_workspace_shapes`` spec (name -> (shape, dtype)), the ``ws`` that kernel takes;
        the names in ``kept_for_backward`` carry what forward leaves for backward."""
        self.workspace_layouts[attribute] = workspace_layout(attribute, dict(spec),
                                                             kept_for_backward)

    def declare_layout(self, attribute: str, layout) -> None:
        """Ask the plan for ``self.<attribute>`` laid out as ``layout``: lists and tuples
        (of ints, and of dict specs as ``declare_dict`` takes), e.g. an engine plan's
        (first image, end, workspace) per slice of the batch."""
        self.workspace_layouts[attribute] = workspace_layout(attribute, layout)

    def workspace(self) -> list[WorkspaceSpec]:
        """Every array the last reshape declared: names, shapes, dtypes, what is kept."""
        return [spec for layout in self.workspace_layouts.values()
                for spec in layout_specs(layout)]

    def shard(self, rank: int, world: int) -> None:
        """Data-parallel training, rank ``rank`` of ``world``: the layer's batch holds the
        global batch's rows rank, rank + world, ...; a random stream then draws the numbers
        of those rows (``RandomStream.shard``), so that masks differ between ranks and N
        ranks draw what one process draws for the whole batch. Data layers override it to
        read those records."""
        stream = getattr(self, "random", None)
        if stream is not None:
            stream.shard(rank, world)

    def empty(self, shape, dtype=None):
        """An array allocated outside reshape's declarations: only for a buffer a layer
        finds it needs in forward, once (an in-place run its reshape could not foresee)."""
        return self.xp.empty(tuple(int(d) for d in shape), dtype=dtype or self.dtype)

    def shape_error(self, message: str) -> ShapeError:
        return ShapeError(f"{self.label}: {message}")

    def resolve_path(self, path: str) -> Path:
        """A path from the net file: as given if it exists, else beside the net file."""
        return resolve_file(path, *self.ctx.base_dirs)


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; may run in place."""

    num_bottoms = 1
    num_tops = 1
    in_place_ok = True

    def reshape(self, bottom_shapes):
        return [bottom_shapes[0]]


class LossLayer(Layer):
    """Two bottoms (prediction, target), a scalar top carrying loss_weight 1 by default."""

    min_bottoms = 2
    max_bottoms = 2
    min_tops = 1
    max_tops = 1
    is_loss = True
    no_gradient_bottoms = (1,)

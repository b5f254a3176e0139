"""The layer contract shared by every layer.

setup (read params, create parameter blobs once) -> reshape (pure shape inference) ->
forward (write tops) -> backward (write bottom diffs, accumulate param diffs).

Arity and in-place safety are declared as class attributes and checked centrally by the
graph compiler, never inside each layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netforge.blob import Blob
from netforge.errors import ConfigError, ShapeError, layer_label
from netforge.files import resolve_file
from netforge.fillers import fill


@dataclass
class LayerContext:
    """What a layer may know about the net it lives in."""

    phase: str = "TRAIN"  # "TRAIN" or "TEST"
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    xp: object = np
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng())
    base_dirs: tuple[Path, ...] = ()  # where relative paths in the net file may live


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

    # -- the contract -------------------------------------------------------------------------
    def setup(self, bottom_shapes: list[tuple[int, ...]]) -> None:
        """Read the layer's parameters and create parameter blobs (once)."""

    def reshape(self, bottom_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Top shapes for these bottom shapes; allocate workspaces. Raise ShapeError."""
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

    def share_tops(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        """Called by the plan each time it (re)allocates this layer's tops. A layer whose
        tops alias bottom memory instead of copying (Reshape, a one-top Slice) points them
        here. Default: nothing."""

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

    def empty(self, shape, dtype=None):
        """A workspace array allocated at reshape time (never in forward/backward)."""
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

"""The execution plan the compile passes build: one LayerStep per layer, every blob allocated
once, the learnable parameters; forward and backward then only index into it."""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

from netforge.blob import Blob
from netforge.errors import GraphError
from netforge.graph import fusion, memory_plan, train_memory
from netforge.graph.arena import Arena, plan_sources
from netforge.graph.memory_plan import MemoryPlan
from netforge.graph.shapes import reshape_step, reshare_tops
from netforge.graph.train_memory import DiffPlan
from netforge.graph.user_names import split_aliases, user_names
from netforge.layers.base import Layer


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
    """One layer in the plan. ``wiring.wire`` sets the layer and its blob names, the later
    passes fill in the rest: loss weights (``params``), blobs (``shapes``), need-backward and
    propagate-down (``backward``)."""

    layer: Layer
    bottom_names: list[str]
    top_names: list[str]
    bottoms: list[Blob] = field(default_factory=list)
    tops: list[Blob] = field(default_factory=list)
    loss_weights: list[float] = field(default_factory=list)
    need_backward: bool = False
    propagate_down: list[bool] = field(default_factory=list)

    def in_place(self, j: int) -> bool:
        """Whether top ``j`` is bottom ``j`` (Caffe's in-place idiom: the same name)."""
        return j < len(self.bottom_names) and self.top_names[j] == self.bottom_names[j]


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
    diffs: DiffPlan | None = None  # set by share_diffs (train nets of a solver)
    arena: Arena | None = None  # where all of it lives once adopted (graph/arena.py)
    # Fused chains by the index of their head step (netforge.graph.fusion; {}: none)
    fused: dict = field(default_factory=dict)
    _rearranging: int = field(default=0, repr=False)  # depth of nested memory passes

    def hold_arena_views(self, holder) -> None:
        """Let the arena rebuild the views of this plan's arrays that ``holder`` keeps (test
        nets reading the train net's weights, the update rule's views of the parameters)
        whenever it moves them."""
        if self.arena is not None and all(holder is not h for h in self.arena.holders):
            self.arena.holders.append(holder)

    def adopt_arena(self, holders=(), history=()) -> Arena | None:
        """Move every array of the plan into its arena (``netforge.graph.arena``); views
        kept under ``holders`` (the Net, the Solver) are rebuilt there too. A plan whose
        layers reshape their tops during forward keeps private memory (it would be laid out
        again on every such forward)."""
        if memory_plan.unsupported_reason(self):
            return None
        if self.arena is None:
            xp = self.steps[0].layer.xp if self.steps else None
            self.arena = Arena(xp, lambda: plan_sources(self))
            self.arena.holders.append(self)
        for holder in holders:
            self.hold_arena_views(holder)
        self.arena.history.extend(h for h in history if all(h is not k for k in self.arena.history))
        self.arena.adopt()
        return self.arena

    @contextmanager
    def rearranging(self, kinds=("activations", "gradients", "workspace")):
        """Run a pass that changes memory (share_diffs, share_memory, a reshape): the memory
        passes find sharing by each array's own root, so the arena gives the regions of
        ``kinds`` back an array of their own first, and takes them in again after (the
        parameters and the solver's history, which no pass groups, stay put)."""
        # Only the outermost pass releases and adopts (a reshape runs share_diffs and
        # share_memory inside it).
        outermost = self._rearranging == 0
        arena = self.arena if outermost and self.arena is not None and self.arena.adopted \
            else None
        if arena is not None:
            arena.release(kinds)
        self._rearranging += 1
        try:
            yield
        finally:
            self._rearranging -= 1
            if arena is not None:
                arena.adopt()

    def reshape(self, start: int = 0) -> None:
        """Re-run shape inference for layers ``start``.. with the current bottom shapes
        (Caffe's Net::Reshape), reallocating only the blobs whose shapes changed.

        Called after a caller reshaped an input blob (pycaffe's
        ``net.blobs["data"].reshape(...); net.reshape()``), and by the net during forward
        after a layer with ``dynamic_top_shapes`` (Filter) changed its tops' shapes. A plan
        that shares memory gets private blobs back first and is planned again after.
        """
        if self.arena is not None and self.arena.adopted and not self._shapes_change(start):
            return  # nothing to lay out again: every array stays where it is
        with self.rearranging():
            self._reshape(start)

    def _shapes_change(self, start: int) -> bool:
        """Whether a reshape from step ``start`` would change a top's shape or a layer's
        declared workspace (reshape is pure shape inference: asking changes nothing)."""
        shapes = {name: blob.shape for name, blob in self.blobs.items()}
        with user_names(split_aliases(self.steps)):
            for step in self.steps[start:]:
                if not step.bottoms:
                    continue
                before = dict(step.layer.workspace_layouts)
                tops = step.layer.reshape([shapes[name] for name in step.bottom_names])
                if step.layer.workspace_layouts != before:
                    return True
                for name, blob, shape in zip(step.top_names, step.tops, tops, strict=False):
                    shape = tuple(int(d) for d in shape)
                    if shape != blob.shape:
                        return True
                    shapes[name] = shape
        return False

    def _reshape(self, start: int) -> None:
        memory, diffs = self.memory, self.diffs
        if memory is not None:
            self._unshare(memory)
        if diffs is not None:
            self._unshare_diffs(diffs)
        with user_names(split_aliases(self.steps)):  # errors name the user's blobs
            for step in self.steps[start:]:
                reshape_step(step)
        if diffs is not None:
            self.share_diffs(activations=diffs.activations)
        if memory is not None:
            self.share_memory(memory.keep)
        else:
            memory_plan.share_scratch(self)  # the layers' new workspaces

    def share_memory(self, keep=()) -> MemoryPlan | None:
        """Let activations that are never alive together share memory, and layers share one
        scratch arena (``netforge.graph.memory_plan``). Only for nets that never run
        backward; outputs, inputs and the blobs named in ``keep`` stay readable after
        forward."""
        with self.rearranging():
            self.memory = memory_plan.share_memory(self, keep)
        if self.fused:  # forward only: Scales that would need backward may fuse too
            self.fused = fusion.find_chains(self.steps, forward_only=True)
        return self.memory

    def share_diffs(self, activations: bool = False) -> DiffPlan:
        """Let blob diffs that are never alive together share memory, and with
        ``activations`` the activations too (``netforge.graph.train_memory``): for a
        solver's train net, where nothing reads an intermediate diff or activation after
        backward."""
        with self.rearranging():
            self.diffs = train_memory.share_diffs(self, activations)
        return self.diffs

    def _unshare_diffs(self, diffs: DiffPlan) -> None:
        for name in diffs.shared_blobs:
            blob = self.blobs[name]
            if blob.diff is not None and blob.diff.base is not None:
                blob.diff = blob.xp.zeros(blob.shape, dtype=blob.dtype)
        for name in diffs.activation_blobs:
            blob = self.blobs[name]
            if blob.data.base is not None:  # still a view into a slot
                blob.data = blob.xp.empty(blob.shape, dtype=blob.dtype)
        reshare_tops(self.steps)
        self.diffs = None

    def check_readable(self, names) -> None:
        """Refuse to hand out blobs whose memory a later layer reuses (see share_memory)."""
        if self.memory is not None:
            shared, how = self.memory.shared_blobs, "reuse_memory=True"
            fix = "name them in keep_blobs to read them"
        elif self.diffs is not None and self.diffs.activation_blobs:
            shared, how = self.diffs.activation_blobs, "a solver's train net"
            fix = "build the solver with share_activations=False to read them"
        else:
            return
        stale = [name for name in names if name in shared]
        if stale:
            raise GraphError(
                f'net "{self.name}" shares memory between activations ({how}): '
                f"blob(s) {', '.join(stale)} do not keep their values after forward; {fix}")

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
        reshare_tops(self.steps)
        self.memory = None

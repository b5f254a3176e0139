"""Training memory by liveness: blob gradients (diffs) that are never alive together share
memory.

Backward runs the steps in reverse. The diff of a blob is written by the backward of the
layer that reads the blob as a bottom (its one consumer: a blob read twice feeds a Split)
and read by the backward of the layer that produced it; in between, it must survive. In
forward step indices a diff group (blobs sharing diff memory: in-place chains, Reshape views)
lives over ``[lo, hi]``, the first and last step that touch it. ``share_diffs(plan)``:

1. groups blobs by the memory their diff already aliases, and finds each group's interval;
2. keeps private (never shares) the diffs that backward does not fully write before it reads
   them: a group whose last-touching step does not write it as a propagated bottom (net
   outputs without a loss weight, tops of layers that never run backward, labels), the net's
   inputs (``Net.backward`` returns their diffs), the loss tops (the net seeds them), and
   every diff a Python layer touches (user code may accumulate);
3. places the others in one arena (memory_plan.pack_into_arena, greedy by size) so that
   groups alive at the same time get disjoint bytes, on backward's timeline (below);
4. points each group's owner at a view into the arena and re-runs the aliasing
   (``share_tops``).

Parameter diffs are never shared (they accumulate over iter_size passes). Every layer's
backward assigns the bottom diffs it propagates to, in full (Caffe's contract: blob diffs
are never cleared between iterations, so a layer relying on zeros would already be wrong on
its second iteration), hence a shared diff is always written before it is read.

``share_batch_norm_copies(plan)`` (run by ``share_diffs`` too) is Caffe's BatchNorm→Scale
chain made cheap: a BatchNorm computing batch statistics keeps a copy of its output
(x_norm) for backward, and an in-place Scale right after it, on that output, keeps a copy of
its bottom — the same values; the Scale then reads BatchNorm's copy instead of its own.

Activations too (``activations=True``, what the solver asks for): an activation that no
backward reads is dead after its last forward reader, as in a forward-only net
(memory_plan); one that a backward reads lives until that backward. Each layer says which
of its bottoms' and tops' data its backward reads (``Layer.backward_reads``; the default,
for a layer that does not say, is all of them): ReLU its top, Convolution and InnerProduct
their bottoms, MAX pooling, Dropout, BatchNorm, Split, Concat and Eltwise SUM nothing (they
keep a mask or a copy of their own, or need diffs only). Activations and diffs are packed
into the same arena, on one timeline: forward step ``i`` at time ``i``, the backward of step
``j`` at ``2n - 1 - j`` (n steps), so the memory of activations that backward has done with
holds the diffs of the layers below. Never shared: the net's inputs and outputs, the tops of
source layers (data layers write them), every blob a Python layer touches, and nothing at
all in a net whose tops change shape during forward (Filter, Python).

What changes for a caller: after ``backward``, only the diffs of the net's inputs, of the
loss tops and of the private groups keep their values; an intermediate blob's diff holds
some later gradient, and (with ``activations``) an intermediate blob's data some later
activation. So the solver opts in for its train net (``Plan.share_diffs``), where nothing
reads them; a ``Net`` built directly keeps every diff and activation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from netforge.graph.memory_plan import (
    activation_groups,
    data_group_of,
    nbytes,
    pack_into_arena,
    root_of,
    share_scratch,
    unsupported_reason,
    view_into,
)
from netforge.graph.shapes import reshare_tops

log = logging.getLogger("netforge")


@dataclass
class DiffPlan:
    """What ``share_diffs`` did, for logs and tests."""

    slots: list[int] = field(default_factory=list)  # bytes of the shared arena (one)
    shared_blobs: list[str] = field(default_factory=list)
    private_blobs: list[str] = field(default_factory=list)
    bytes_before: int = 0  # the shared diffs' own bytes
    copy_bytes_saved: int = 0  # Scale copies replaced by BatchNorm's (share_batch_norm_copies)
    activations: bool = False  # asked to share activations too
    activation_blobs: list[str] = field(default_factory=list)  # data shares memory too
    activation_bytes_before: int = 0

    @property
    def shared_bytes(self) -> int:
        return sum(self.slots)


@dataclass
class _DiffGroup:
    root: object
    owner: object = None
    names: list[str] = field(default_factory=list)
    lo: int = -1
    hi: int = -1
    written_at_hi: bool = False
    read_at_hi: bool = False
    private: bool = False

    def touch(self, index: int) -> None:
        if index > self.hi:
            self.hi, self.written_at_hi, self.read_at_hi = index, False, False
        self.lo = index if self.lo < 0 else min(self.lo, index)


def share_batch_norm_copies(plan) -> int:
    """Point every in-place Scale that directly follows a batch-statistics BatchNorm, on its
    top, at the BatchNorm's x_norm; returns the bytes saved."""
    saved = 0
    for first, second in zip(plan.steps, plan.steps[1:], strict=False):
        bn, scale = first.layer, second.layer
        if (bn.type != "BatchNorm" or scale.type != "Scale" or not second.in_place(0)
                or len(second.bottoms) != 1
                or second.bottoms[0] is not first.tops[0]
                or getattr(bn, "x_norm", None) is None
                or getattr(scale, "bottom_copy", None) is None):
            continue
        shape = second.bottoms[0].shape
        if not scale.copy_borrowed:
            saved += nbytes(scale.bottom_copy)
        scale.borrow_bottom_copy(bn.x_norm.reshape(shape))
    return saved


def recompute_columns(plan) -> tuple[int, int]:
    """Trade time for memory: Convolution layers rebuild their im2col columns in backward
    instead of keeping forward's, so the columns become scratch shared by all layers (the
    cheap-recomputation idea of Chen et al. 2016, applied to the columns only). The solver
    does it by default (``Solver(..., recompute_columns=False)`` keeps them): measured with
    tools/bench/cpu.py on one core (2026-12-02, a loaded 2-core machine, CPU time per step,
    two runs each), ResNet-50 at batch 2 took 415-425 ms keeping its columns and 418-431 ms
    rebuilding them, DenseNet-121 474-478 and 476-478 ms, within the noise, for 115 MB
    (ResNet-50) and 300 MB (DenseNet-121) less peak memory. (An earlier measurement, before
    the compiled kernels, found a third more time on DenseNet-121.) Returns
    share_scratch's (before, after)."""
    for step in plan.steps:
        if hasattr(step.layer, "keep_columns"):
            step.layer.keep_columns = False
    return share_scratch(plan)


def share_diffs(plan, activations: bool = False) -> DiffPlan:
    """Share the diff memory of ``plan``'s blobs by liveness, and with ``activations`` their
    data too, all in one arena (see the module docstring)."""
    report = DiffPlan(activations=activations)
    report.copy_bytes_saved = share_batch_norm_copies(plan)
    shared = _shareable_diff_groups(plan, report)
    report.bytes_before = sum(nbytes(g.root) for g in shared)
    end = 2 * len(plan.steps) - 1  # backward of step j runs at time end - j
    items = [(end - g.hi, end - g.lo, nbytes(g.root), g) for g in shared]
    data_groups = []
    if activations:
        reason = unsupported_reason(plan)
        if reason:
            log.info("Activation sharing in training disabled: %s", reason)
        else:
            data_groups = _shareable_activations(plan, end)
            items += [(g.first, g.last, nbytes(g.root), g) for g in data_groups]
            report.activation_bytes_before = sum(nbytes(g.root) for g in data_groups)
    data_ids = {id(g) for g in data_groups}
    size, offsets = pack_into_arena(items)
    if offsets:
        arena = offsets[0][1].owner.xp.empty(size, dtype="uint8")
        for offset, group in offsets:
            if id(group) in data_ids:
                group.owner.data = view_into(arena, group.owner.data, offset)
                report.activation_blobs.extend(group.names)
            else:
                group.owner.diff = view_into(arena, group.owner.diff, offset)
        report.slots.append(size)
    reshare_tops(plan.steps)
    log.info("Training memory: %d bytes of blob diffs and %d of activations in an arena of "
             "%d bytes; %d blobs keep private diffs", report.bytes_before,
             report.activation_bytes_before, report.shared_bytes, len(report.private_blobs))
    return report


def _shareable_activations(plan, end: int) -> list:
    """The activation groups that may share memory, each ``last`` moved to the last backward
    that reads its data (time ``end - j`` for the backward of step ``j``)."""
    pinned_names = set(plan.outputs) | set(plan.inputs)
    python_steps = [s for s in plan.steps if s.layer.type == "Python"]
    for step in python_steps:
        pinned_names.update(step.bottom_names)
        pinned_names.update(step.top_names)
    groups = activation_groups(plan, pinned_names)
    for step in python_steps:  # a Python layer's bottoms may be tops of no step (pinned)
        for blob in step.bottoms:
            group = data_group_of(groups, blob)
            if group is not None:
                group.pinned = True
    for j, step in enumerate(plan.steps):
        if not step.need_backward:
            continue
        read_bottoms, read_tops = step.layer.backward_reads(step.bottoms, step.tops)
        for blob in [step.bottoms[k] for k in read_bottoms] + [step.tops[k] for k in read_tops]:
            group = data_group_of(groups, blob)
            if group is not None:
                group.last = max(group.last, end - j)
    return [g for g in groups.values() if not g.pinned]


def _shareable_diff_groups(plan, report: DiffPlan) -> list[_DiffGroup]:
    """The diff groups that may share memory; names the private ones in ``report``."""
    groups: dict[int, _DiffGroup] = {}

    def group_of(name: str, blob) -> _DiffGroup | None:
        if blob.diff is None:
            return None
        root = root_of(blob.diff)
        group = groups.get(id(root))
        if group is None:
            group = groups[id(root)] = _DiffGroup(root)
        if blob.diff is root:
            group.owner = blob
        if name not in group.names:
            group.names.append(name)
        return group

    private_names = set(plan.inputs)
    loss_blobs = {id(top) for top, _ in plan.loss_tops}
    for i, step in enumerate(plan.steps):
        if not step.need_backward:
            continue
        python = step.layer.type == "Python"
        for name, blob in zip(step.top_names, step.tops, strict=True):
            group = group_of(name, blob)
            if group is None:
                continue
            group.touch(i)
            group.read_at_hi = group.read_at_hi or group.hi == i
            group.private = group.private or python or id(blob) in loss_blobs
        for j, (name, blob) in enumerate(zip(step.bottom_names, step.bottoms, strict=True)):
            if not step.propagate_down[j]:
                continue
            group = group_of(name, blob)
            if group is None:
                continue
            group.touch(i)
            if group.hi == i:  # (read_at_hi marks an in-place step: it reads first)
                group.written_at_hi = True
            group.private = group.private or python
    for group in groups.values():
        first_touch_writes = group.written_at_hi and not group.read_at_hi
        if (group.owner is None or not first_touch_writes
                or private_names.intersection(group.names)):
            group.private = True
        (report.private_blobs if group.private else report.shared_blobs).extend(group.names)
    return [g for g in groups.values() if not g.private]

"""Memory reuse for forward-only nets: activations that are never alive at the same time
share one buffer, and every layer's scratch workspace lives in one arena.

A net loaded to predict runs its layers once each, in order, and never backward. The blob a
layer writes is read by the layers after it and is dead after its last reader, so its memory
can hold a later blob. ``share_memory(plan, keep)``:

1. groups blobs by the memory they already alias (in-place tops are the bottom's Blob; Split
   tops, Reshape and one-top Slice views point into their bottom's array);
2. gives each group its live range, from the step that first writes it to the last step
   that reads any of its blobs;
3. places the groups in one arena (``pack_into_arena``: the greedy-by-size scheme of
   TFLite's arena planner): groups alive at the same time get disjoint bytes;
4. points each group's root blob at its bytes and re-runs the aliasing (``Layer.share_tops``);
5. gives the scratch buffers layers declare (``Layer.scratch_buffers``) one common arena,
   as large as the largest layer's, since only one layer runs at a time;
6. replaces every ``diff`` (blobs and parameters) by a read-only zero view: forward never
   writes a gradient.

Never shared: the net's inputs and the tops of other source layers (their content comes
from outside forward), the net's outputs, and the blobs named in ``keep`` (with everything
aliasing them). Every other blob's data is valid only until a later layer reuses its memory:
``net.blobs["conv1"].data`` after a forward holds some later activation. That is why reuse is
opt-in (``Net(..., reuse_memory=True, keep_blobs=[...])``), for nets loaded to predict.
Results never change: every layer reads exactly the values it read without sharing
(tests/graph/test_memory_plan.py checks outputs bit for bit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from netforge.graph.shapes import reshare_tops
from netforge.layers.base import ScratchBuffer

log = logging.getLogger("netforge")

_ALIGN = 64  # bytes; arena pieces start on cache-line boundaries


@dataclass
class MemoryPlan:
    """What ``share_memory`` did: the kept names and the sizes, for logs and tests."""

    keep: frozenset[str]
    slots: list[int] = field(default_factory=list)  # bytes of the activation arena (one)
    shared_blobs: list[str] = field(default_factory=list)  # names whose memory is reused
    activation_bytes_before: int = 0
    scratch_bytes_before: int = 0
    scratch_bytes: int = 0
    diff_bytes_dropped: int = 0

    @property
    def activation_bytes(self) -> int:
        return sum(self.slots)


def root_of(array) -> object:
    """The array that owns ``array``'s memory (following views)."""
    while getattr(array, "base", None) is not None and not isinstance(array.base, bytes):
        array = array.base
    return array


def nbytes(array) -> int:
    """The bytes of ``array``'s elements."""
    return int(array.size) * array.dtype.itemsize


def aligned_bytes(size: int) -> int:
    """``size`` rounded up to the alignment of arena pieces."""
    return -(-size // _ALIGN) * _ALIGN


def pack_into_arena(items) -> tuple[int, list[tuple[int, object]]]:
    """Offsets into one arena for ``items``, ``(start, end, nbytes, member)`` with inclusive
    live ranges: members whose ranges overlap get disjoint bytes. Greedy by size (TFLite's
    arena planner): the largest member first, each at the lowest offset where it fits
    between the members already placed that are alive at the same time. Measured against
    the earlier greedy-by-first-use slots (each slot as large as its largest member), it
    comes within a few percent of the largest sum of live bytes at one time (ResNet-50's
    training plan: 72 MB instead of 120). Returns (arena bytes, [(offset, member)])."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, start, end)
    offsets = []
    order = sorted(items, key=lambda item: (-aligned_bytes(item[2]), item[0]))
    for start, end, size, member in order:
        size = aligned_bytes(size)
        offset = 0
        for at, taken in sorted((o, n) for o, n, a, b in placed if a <= end and start <= b):
            if at >= offset + size:
                break  # the gap below this neighbour holds it
            offset = max(offset, at + taken)
        placed.append((offset, size, start, end))
        offsets.append((offset, member))
    return max((o + n for o, n, _, _ in placed), default=0), offsets


def view_into(arena, array, offset: int = 0):
    """A view of ``arena``'s bytes from ``offset`` with ``array``'s dtype and shape."""
    return arena[offset:offset + nbytes(array)].view(array.dtype).reshape(array.shape)


def unsupported_reason(plan) -> str | None:
    """Why this plan cannot share memory, or None."""
    for step in plan.steps:
        if step.layer.dynamic_top_shapes:
            return f"{step.layer.label} may reshape its tops during forward"
    return None


def share_memory(plan, keep) -> MemoryPlan | None:
    """Share activation memory and layer scratch in ``plan`` (see the module docstring).

    Returns the MemoryPlan, or None (and changes nothing) when the plan has a layer whose
    tops change shape during forward. The caller must never run backward afterwards.
    """
    reason = unsupported_reason(plan)
    if reason:
        log.info("Memory reuse disabled: %s", reason)
        return None
    report = MemoryPlan(frozenset(keep))
    _share_activations(plan, report)
    reshare_tops(plan.steps)
    _share_scratch(plan, report)
    _drop_diffs(plan, report)
    log.info("Memory reuse: activations %d -> %d bytes in %d arena, layer scratch %d -> %d "
             "bytes, %d bytes of diffs dropped", report.activation_bytes_before,
             report.activation_bytes, len(report.slots), report.scratch_bytes_before,
             report.scratch_bytes, report.diff_bytes_dropped)
    return report


# -- activations ---------------------------------------------------------------------------


@dataclass
class ActivationGroup:
    """Blobs sharing one data memory root; ``owner`` is the Blob whose array is that root.
    ``first`` and ``last`` are the times that first write it and last read it (forward step
    ``i`` is time ``i``; a training plan puts backward after, see train_memory)."""

    root: object
    owner: object = None
    names: list[str] = field(default_factory=list)
    first: int = -1  # step that first writes the group
    last: int = -1  # last time it is read (or written)
    pinned: bool = False


def activation_groups(plan, pinned_names) -> dict[int, ActivationGroup]:
    """Group the blobs of ``plan`` by their data's memory root and give each group its
    forward live range. Pinned (never shared): the groups holding a name of
    ``pinned_names``, the tops of source layers (their content comes from outside forward),
    and memory the plan did not allocate."""
    groups: dict[int, ActivationGroup] = {}

    def group_of(blob) -> ActivationGroup:
        root = root_of(blob.data)
        group = groups.get(id(root))
        if group is None:
            group = groups[id(root)] = ActivationGroup(root)
        if blob.data is root and group.owner is None:
            # The first blob seen holding the root is its producer's top: blobs that share
            # the very array later (Split tops, ``Blob.share_data``) are re-pointed at the
            # owner's memory by ``share_tops``, so the owner is the one to move.
            group.owner = blob
        return group

    for i, step in enumerate(plan.steps):
        for blob in step.bottoms:
            group = group_of(blob)
            group.last = max(group.last, i)
        for name, blob in zip(step.top_names, step.tops, strict=True):
            group = group_of(blob)
            if group.first < 0:
                group.first = i
            group.last = max(group.last, i)
            if name not in group.names:
                group.names.append(name)
            if not step.bottoms or name in pinned_names:
                group.pinned = True  # sources' tops, inputs, outputs, kept blobs
    for group in groups.values():
        if group.owner is None or group.first < 0:
            group.pinned = True  # memory we did not allocate, or never written here
    return groups


def data_group_of(groups: dict[int, ActivationGroup], blob) -> ActivationGroup | None:
    """The group of ``groups`` that ``blob``'s data belongs to."""
    return groups.get(id(root_of(blob.data)))


def _share_activations(plan, report: MemoryPlan) -> None:
    pinned_names = set(plan.outputs) | set(plan.inputs) | set(report.keep)
    groups = activation_groups(plan, pinned_names)
    report.activation_bytes_before = sum(nbytes(g.root) for g in groups.values()
                                         if not g.pinned)

    unpinned = [g for g in groups.values() if not g.pinned]
    size, offsets = pack_into_arena((g.first, g.last, nbytes(g.root), g) for g in unpinned)
    if not offsets:
        return
    arena = np.empty(size, dtype=np.uint8)
    for offset, group in offsets:
        group.owner.data = view_into(arena, group.owner.data, offset)
        report.shared_blobs.extend(group.names)
    report.slots.append(size)


# -- diffs ---------------------------------------------------------------------------------


def _drop_diffs(plan, report: MemoryPlan) -> None:
    """A forward-only net never writes a gradient: every blob's and parameter's ``diff``
    becomes a read-only zero view taking no memory (the zero-filled arrays the plan made
    were resident wherever the allocator had to clear them: 310 MB in ResNet-50 at batch 2).
    """
    blobs = list(plan.blobs.values()) + [b for params in plan.layer_params.values()
                                         for b in params]
    seen = set()
    for blob in blobs:
        if blob.diff is None or id(blob) in seen:
            continue
        seen.add(id(blob))
        if blob.diff.base is None:
            report.diff_bytes_dropped += nbytes(blob.diff)
        blob.diff = blob.xp.broadcast_to(blob.xp.zeros((), dtype=blob.diff.dtype),
                                         blob.diff.shape)


# -- layer scratch -------------------------------------------------------------------------


def shareable_scratch(layer, forward_only: bool) -> list[ScratchBuffer]:
    """The buffers of ``layer.scratch_buffers()`` that may share memory in this kind of
    net: all of them when no backward runs, else those not kept for backward."""
    return [buffer for buffer in layer.scratch_buffers()
            if forward_only or not buffer.kept_for_backward]


def share_scratch(plan, forward_only: bool = False) -> tuple[int, int]:
    """One arena for the scratch buffers that layers declare (``Layer.scratch_buffers``):
    only one layer runs at a time, but one layer's buffers may be in use together (one per
    batch slice running on its own core, one per bottom), so within a layer they lie side by
    side. Every net shares the buffers that hold nothing from one call (forward or backward)
    to the next; a forward-only net (``forward_only``) also those kept for backward
    (Convolution's columns). Returns (bytes before, arena bytes)."""
    layers = [buffers for step in plan.steps
              if (buffers := shareable_scratch(step.layer, forward_only))]
    sizes = [sum(aligned_bytes(nbytes(buffer.array)) for buffer in buffers) for buffers in layers]
    if not sizes or max(sizes) == 0:
        return 0, 0
    xp = plan.steps[0].layer.xp if plan.steps else np
    arena = xp.empty(max(sizes), dtype=np.uint8)
    for buffers in layers:
        at = 0
        for buffer in buffers:
            array = buffer.array
            size = nbytes(array)
            buffer.place(arena[at:at + size].view(array.dtype).reshape(array.shape))
            at += aligned_bytes(size)
    return sum(sizes), max(sizes)


def _share_scratch(plan, report: MemoryPlan) -> None:
    report.scratch_bytes_before, report.scratch_bytes = share_scratch(plan, forward_only=True)

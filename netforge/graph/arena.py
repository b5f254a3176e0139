"""One arena per net: every array of a plan lives in a few large buffers, one per kind.

The compile passes and the memory passes (memory_plan.share_memory, train_memory.share_diffs,
share_scratch) decide WHICH arrays share memory; the arena decides WHERE all of it lives. Once
the plan is built, ``Arena.adopt`` gathers the memory regions behind

  parameters   every parameter blob's data and diff
  activations  every blob's data (an activation slot of share_memory is one region)
  gradients    every blob's diff (a diff slot of share_diffs is one region)
  workspace    what layers declare at reshape (``Layer.declare``), and the shared scratch
  history      what the solver registers: the update rule's history and scratch, the loss
               scalars

and copies each region into one buffer of its kind (64-byte aligned pieces, the layout of the
regions in the order first met). Every view of a region (a Split top, a Reshape view, a diff in
a slot, a Scale borrowing BatchNorm's x_norm, the update rule's per-parameter views) is rebuilt
at the same offset in its new home, wherever the plan's holders keep it: the walk visits the
holders (the Net, the Solver) and every netforge object, list, tuple and dict under them, and
replaces each array that lies in a moved region. So the step afterwards reads and writes the
arena only, and the arrays a layer or the solver made are freed.

The memory passes find sharing by an array's root (its ``base`` chain): in an adopted plan
every root is an arena buffer, so a pass that changes memory runs on a released plan
(``release``: each region back in an array of its own, of its original shape and dtype) and
the plan is adopted again afterwards (``Plan.rearranging``). Shape changes go the same way,
and only then: a buffer whose regions are laid out as before (the parameters, the solver's
history across a reshape) stays where it is.

Left alone: arrays of another arena (a test net reads the train net's parameters), memory
that is not a C-contiguous array we can copy (a memory map), empty arrays, and arrays no
holder reaches through netforge objects (a user's Python layer keeps its own).
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass, field

import numpy as np

from netforge.graph.memory_plan import aligned_bytes

KINDS = ("parameters", "activations", "gradients", "workspace", "history")

# Every live arena buffer, by id: another plan's arena must not adopt them (test nets point
# at the train net's parameters).
_BUFFERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def root_of(array):
    """The array that owns ``array``'s memory: the end of its ``base`` chain (numpy's
    as_strided puts a non-array between, so any object with a ``base`` is followed)."""
    while getattr(array, "base", None) is not None and not isinstance(array.base, bytes):
        array = array.base
    return array


def address(array) -> int:
    """The device or host address of ``array``'s first element."""
    interface = getattr(array, "__array_interface__", None)
    if interface is not None:
        return interface["data"][0]
    return array.data.ptr  # CuPy


def is_array(value) -> bool:
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("cupy")


@dataclass(frozen=True)
class Piece:
    """One region as laid out in a buffer: where, and the array it was before adoption."""

    start: int
    size: int
    shape: tuple
    dtype: np.dtype


@dataclass
class _Region:
    root: object  # the array (or old arena buffer) holding the region now
    start: int  # byte offset of the region in root
    size: int
    shape: tuple
    dtype: np.dtype
    kind: str = ""
    target: object = None  # the new home (a buffer, or the array of a released region)
    target_start: int = 0


@dataclass
class ArenaReport:
    """Bytes per kind, for logs and tests."""

    bytes: dict = field(default_factory=dict)
    regions: int = 0

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


class Arena:
    """The buffers of one plan, and the objects that hold views of them (see the module
    docstring). ``sources``: a callable returning (kind, array) pairs — what the plan owns;
    ``holders``: where references to those arrays live."""

    def __init__(self, xp, sources):
        self.xp = xp
        self.sources = sources
        self.holders: list = []
        self.history: list = []  # objects whose arrays are the solver's (kind "history")
        self.buffers: dict[str, object] = {}
        self.pieces: dict[int, list[Piece]] = {}  # id(buffer) -> its pieces by start
        self.report = ArenaReport()

    @property
    def adopted(self) -> bool:
        return bool(self.buffers)

    def owns(self, array) -> bool:
        root = root_of(array)
        return any(root is buffer for buffer in self.buffers.values())

    # -- adopt ---------------------------------------------------------------------------
    def adopt(self) -> ArenaReport:
        """Move every region the sources name into one buffer per kind; rebind all views."""
        regions: dict[tuple, _Region] = {}
        for kind, array in self._source_arrays():
            region = self._region_of(array)
            if region is not None and (id(region.root), region.start) not in regions:
                region.kind = kind
                regions[(id(region.root), region.start)] = region
        buffers, pieces = {}, {}
        report = ArenaReport(regions=len(regions))
        for kind in KINDS:
            members = [r for r in regions.values() if r.kind == kind]
            if not members:
                continue
            kept = self.buffers.get(kind)
            if (kept is not None and all(r.root is kept for r in members)
                    and [(r.start, r.size) for r in members]
                    == [(p.start, p.size) for p in self.pieces[id(kept)]]):
                # Laid out as before (the parameters across a reshape): it stays in place.
                for r in members:
                    del regions[(id(r.root), r.start)]
                buffers[kind], pieces[id(kept)] = kept, self.pieces[id(kept)]
                report.bytes[kind] = int(kept.nbytes)
                continue
            total = sum(aligned_bytes(r.size) for r in members)
            # zeros: fresh memory reads as zeros without being touched (calloc), so the pages
            # of a region that are all zeros (an unused diff) need not be copied, nor become
            # resident (copy_nonzero_pages).
            buffer = self.xp.zeros(total, dtype=np.uint8)
            if self.xp is np and kind in SMALL_PAGE_KINDS:
                use_small_pages(buffer)
            at, laid = 0, []
            for r in members:
                r.target, r.target_start = buffer, at
                laid.append(Piece(at, r.size, r.shape, r.dtype))
                at += aligned_bytes(r.size)
            buffers[kind], pieces[id(buffer)] = buffer, laid
            report.bytes[kind] = int(buffer.nbytes)
        self._move(regions, skip_zeros=True)
        self.buffers, self.pieces, self.report = buffers, pieces, report
        for buffer in buffers.values():
            _BUFFERS[id(buffer)] = buffer
        return report

    def release(self, kinds=KINDS) -> None:
        """Give every region of the buffers of ``kinds`` an array of its own again (its
        original shape and dtype), so the memory passes see one root per region; those
        buffers are dropped."""
        released = {kind: b for kind, b in self.buffers.items() if kind in kinds}
        if not released:
            return
        regions: dict[tuple, _Region] = {}
        for buffer in released.values():
            for piece in self.pieces[id(buffer)]:
                region = _Region(buffer, piece.start, piece.size, piece.shape, piece.dtype)
                region.target = self.xp.empty(piece.shape, dtype=piece.dtype)
                regions[(id(buffer), piece.start)] = region
        self._move(regions, skip_zeros=False)
        for kind, buffer in released.items():
            del self.buffers[kind], self.pieces[id(buffer)]
            self.report.bytes.pop(kind, None)

    # -- internals -----------------------------------------------------------------------
    def _source_arrays(self):
        yield from self.sources()
        for holder in self.history:
            for array in arrays_under(holder):
                yield "history", array

    def _region_of(self, array) -> _Region | None:
        if not is_array(array) or array.size == 0:
            return None
        root = root_of(array)
        if not is_array(root):
            return None  # memory owned by something else (a memory map, bytes)
        mine = self.pieces.get(id(root))
        if mine is not None and any(root is b for b in self.buffers.values()):
            offset = address(array) - address(root)
            for piece in mine:
                if piece.start <= offset < piece.start + max(piece.size, 1):
                    return _Region(root, piece.start, piece.size, piece.shape, piece.dtype)
            return None
        if id(root) in _BUFFERS or not root.flags.c_contiguous:
            return None  # another arena's, or memory we cannot copy as bytes
        return _Region(root, 0, int(root.nbytes), tuple(root.shape), root.dtype)

    def _move(self, regions: dict, skip_zeros: bool) -> None:
        """Copy each region to its target and replace every array in it, under every
        holder, by the same view of the target."""
        for r in regions.values():
            source = byte_view(r.root)[r.start:r.start + r.size]
            target = byte_view(r.target)[r.target_start:r.target_start + r.size]
            if skip_zeros and self.xp is np:
                copy_nonzero_pages(source, target)
            else:
                target[...] = source
        # Regions by root, for the lookup of each array met.
        by_root: dict[int, list[_Region]] = {}
        for r in regions.values():
            by_root.setdefault(id(r.root), []).append(r)
        keep_alive = [r.root for r in regions.values()]  # ids stay unique during the walk

        def moved(array):
            if array.size == 0:
                return None
            root = root_of(array)
            candidates = by_root.get(id(root))
            if candidates is None or candidates[0].root is not root:
                return None
            offset = address(array) - address(root)
            for r in candidates:
                if r.start <= offset < r.start + max(r.size, 1):
                    return rebuilt(array, r.target, r.target_start + offset - r.start,
                                   whole=(r.target_start == 0 and offset == r.start
                                          and tuple(array.shape) == tuple(r.target.shape)
                                          and array.dtype == r.target.dtype
                                          and array.flags.c_contiguous))
            return None

        rebind(self.holders, moved)
        del keep_alive


PAGE = 4096
# numpy asks Linux for transparent huge pages on arrays of 4 MB or more: one byte written
# makes 2 MB resident. An array of its own never shares a huge page with another; in an
# arena, the regions a net does not touch (a Scale's copy for backward in a net that only
# predicts, a slot's unused end) would become resident through the huge pages they share
# with their neighbours: measured, +12 MB on ResNet-50's predict net at batch 2. So the
# buffers of activations, gradients and workspaces use small pages; parameters and the
# solver's history, read and written whole every step, keep huge pages as before.
SMALL_PAGE_KINDS = ("activations", "gradients", "workspace")
MADV_NOHUGEPAGE = 15  # linux/mman.h


def use_small_pages(buffer) -> None:
    """Ask Linux not to back ``buffer`` (a host array) with transparent huge pages."""
    start = address(buffer)
    lo = -(-start // PAGE) * PAGE
    length = (start + buffer.nbytes - lo) // PAGE * PAGE
    if length <= 0:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(length), MADV_NOHUGEPAGE)
    except (OSError, AttributeError):  # not Linux: nothing to ask
        pass


def copy_nonzero_pages(source, target) -> None:
    """``target[...] = source`` for a zero-filled ``target``, page by page, skipping the
    pages of ``source`` that are all zeros: a page never written reads as zeros without
    becoming resident, so memory the plan allocated but nothing has touched yet (most
    diffs, a workspace's unused end) stays out of RSS in the arena too."""
    size = source.size
    whole = size // PAGE * PAGE
    if whole:
        nonzero = source[:whole].reshape(-1, PAGE).any(axis=1)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], nonzero.view(np.int8), [0]))))
        for first, end in zip(edges[::2], edges[1::2], strict=True):  # runs of nonzero pages
            target[first * PAGE:end * PAGE] = source[first * PAGE:end * PAGE]
    if whole < size and source[whole:].any():
        target[whole:] = source[whole:]


def byte_view(array):
    """The bytes of a C-contiguous array, as a flat uint8 view."""
    return array.reshape(-1).view(np.uint8)


def rebuilt(array, target, offset: int, whole: bool):
    """``array``'s view (shape, dtype, strides) at byte ``offset`` of ``target``."""
    if whole:
        return target  # a released region's own array: the root the passes look for
    flat = byte_view(target)
    if array.flags.c_contiguous:
        new = flat[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    else:
        if any(s < 0 for s in array.strides):
            raise ValueError(f"cannot move a view with negative strides {array.strides}")
        span = sum((n - 1) * s for n, s in zip(array.shape, array.strides, strict=True))
        span += array.itemsize
        span = -(-span // array.itemsize) * array.itemsize
        base = flat[offset:offset + span].view(array.dtype)
        xp = np if isinstance(array, np.ndarray) else _module_of(array)
        new = xp.lib.stride_tricks.as_strided(base, shape=array.shape, strides=array.strides)
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        new.flags.writeable = False  # a dropped diff stays read-only
    return new


def _module_of(array):
    import cupy

    return cupy


def _walkable(value) -> bool:
    kind = type(value)
    return (kind.__module__.startswith("netforge") and not isinstance(value, type)
            and not isinstance(value, Arena))


def _attributes(value) -> list[str]:
    names = list(getattr(value, "__dict__", {}))
    for kind in type(value).__mro__:
        for name in getattr(kind, "__slots__", ()):
            if name not in ("__dict__", "__weakref__") and hasattr(value, name):
                names.append(name)
    return names


def rebind(holders, replace) -> None:
    """Replace, under ``holders``, every array ``a`` for which ``replace(a)`` is not None.
    Walks lists, tuples (rebuilt), dicts and netforge objects, each once; the same old array
    always becomes the same new one."""
    done: dict[int, object] = {}  # id(old) -> replacement (None: unchanged)
    alive: list = []

    def visit(value):
        key = id(value)
        if key in done:
            return done[key]
        alive.append(value)
        done[key] = None
        result = None
        if is_array(value):
            result = replace(value)
        elif isinstance(value, dict):
            for k, v in list(value.items()):
                new = visit(v)
                if new is not None:
                    value[k] = new
        elif isinstance(value, list):
            for i, v in enumerate(value):
                new = visit(v)
                if new is not None:
                    value[i] = new
        elif isinstance(value, tuple):
            items = [visit(v) for v in value]
            if any(new is not None for new in items):
                items = [v if new is None else new for v, new in zip(value, items, strict=True)]
                result = type(value)(*items) if hasattr(value, "_fields") else tuple(items)
        elif _walkable(value):
            for name in _attributes(value):
                new = visit(getattr(value, name))
                if new is not None:
                    object.__setattr__(value, name, new)  # frozen dataclasses too
        done[key] = result
        return result

    for holder in holders:
        visit(holder)


def arrays_under(holder) -> list:
    """Every array reachable from ``holder`` the way ``rebind`` walks."""
    found: list = []
    rebind([holder], lambda a: found.append(a))
    return found


def plan_sources(plan):
    """What a plan owns, by kind: parameters, blobs' data and diffs, and the layers' arrays
    (their declared workspaces and whatever else they keep: tables, batch statistics, the
    random streams' counters). Layers without bottoms (data layers, whose prefetch threads
    write their own buffers) and Python layers (user code) keep theirs."""
    for blobs in plan.layer_params.values():
        for blob in blobs:
            yield "parameters", blob.data
            if blob.diff is not None:
                yield "parameters", blob.diff
    for blob in plan.blobs.values():
        yield "activations", blob.data
    for blob in plan.blobs.values():
        if blob.diff is not None:
            yield "gradients", blob.diff
    for step in plan.steps:
        if step.bottoms and step.layer.type != "Python":
            for array in arrays_under(step.layer):
                yield "workspace", array

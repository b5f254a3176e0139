"""The CPU engine wrapper: batch-parallel kernels run over slices of the batch, one slice
per core (``netforge.ops.batch_split``), so that layers only map their configuration onto
kernel calls.

Which kernels split, and how:

    convolution   one slice of images per core, each with its own workspace; the weight
                  and bias gradients of each slice go into its own accumulators, added to
                  dw and db in slice order (deterministic)
    inner product the rows of x / y / dx per core in forward and for dx; for dw the rows of
                  W (the outputs), so that every slice writes its own rows, no partial sums
    pooling       one slice of images per core (MAX and AVE), each with its own workspace

A batch of one (``netforge predict --batch-size 1``) has no images to split: a
convolution then splits its GEMM by output channels (``single_image_conv``) and an inner
product its outputs, on the same pool, rather than leaving the small GEMMs to OpenBLAS's
threads (which stalled whenever another thread held a core, 20x slower on SqueezeNet).

Plans are made at reshape (``*_plan``: slices and workspaces, allocated once) and replayed
by the run functions. ``*_layout`` gives the same plan with each workspace still a spec
(name -> shape, dtype): what a layer declares, for the graph to allocate. With one part
(CuPy, a batch of one, NETFORGE_NUM_THREADS=1, no controllable OpenBLAS) a plan is a single
slice and the kernels run unsplit.
"""

from __future__ import annotations

from collections.abc import Callable

from netforge.ops import batch_split, compiled, vision
from netforge.ops import common as linear_ops
from netforge.ops.fused import ChannelEpilogue, apply_epilogue
from netforge.ops.xp import Array, WorkspaceSpec, allocate_layout, get_array_module, view_as

Part = tuple[int, int, dict]  # (first image, end, the slice's workspace)
# A batch-1 GEMM smaller than this (multiply-adds) runs on one core: the pool's hand-off
# would cost about what the second core saves (measured on SqueezeNet 1.1, 2 cores).
SPLIT_MIN_MACS = 1 << 23


def slice_plan(n: int, spec: Callable[[int], WorkspaceSpec], xp, *, split: bool = True,
               accumulators: WorkspaceSpec | None = None) -> list[Part]:
    """(lo, hi, workspace) per slice of a batch of ``n``: ``spec(images)`` gives a slice's
    scratch; ``accumulators`` (name -> shape, dtype) are added to every slice's workspace
    when the batch is split (each slice's share of a parameter gradient)."""
    return allocate_layout(slice_layout(n, spec, xp, split=split,
                                        accumulators=accumulators), xp)


def slice_layout(n: int, spec: Callable[[int], WorkspaceSpec], xp, *, split: bool = True,
                 accumulators: WorkspaceSpec | None = None) -> list:
    """``slice_plan``'s slices with each workspace as its spec."""
    count = batch_split.parts(xp) if split else 1
    parts = []
    for lo, hi in batch_split.split(n, count):
        full = dict(spec(hi - lo))
        if hi - lo < n and accumulators:
            full.update(accumulators)
        parts.append((lo, hi, full))
    return parts


def run_slices(parts: list[Part], fn: Callable, /, *arrays: Array | None, **kwargs) -> None:
    """``fn(*slices of arrays, ws=slice workspace, **kwargs)`` per slice, in parallel
    (arrays sliced along axis 0; None passes as None)."""
    batch_split.run([
        lambda lo=lo, hi=hi, ws=ws: fn(*[None if a is None else a[lo:hi] for a in arrays],
                                       ws=ws, **kwargs)
        for lo, hi, ws in parts])


def run_planes(parts: list[Part], fn: Callable, /, *arrays: Array | None, **kwargs) -> None:
    """``run_slices`` for a kernel that treats every (image, channel) plane alone and keeps
    nothing in its workspace when compiled (pooling's forward): a batch of one is split by
    channels instead of running on one core (x[:, lo:hi] of one image is contiguous)."""
    lo, hi, ws = parts[0]
    present = [a for a in arrays if a is not None]
    if len(parts) == 1 and hi - lo == 1 and compiled.active(*present):
        count = batch_split.parts(get_array_module(present[0]))
        if count > 1 and present[0].shape[1] > 1:
            batch_split.run([
                lambda c0=c0, c1=c1: fn(*[None if a is None else a[:, c0:c1] for a in arrays],
                                        ws=ws, **kwargs)
                for c0, c1 in batch_split.split(present[0].shape[1], count)])
            return
    run_slices(parts, fn, *arrays, **kwargs)


# --------------------------------------------------------------------------- convolution


def conv_plan(x_shape: tuple[int, ...], w_shape: tuple[int, ...], geometry: dict, dtype, xp,
              *, split: bool = True, bias: bool = True) -> list[Part]:
    """Slices of a convolution's batch, with workspaces and gradient accumulators."""
    return allocate_layout(conv_layout(x_shape, w_shape, geometry, dtype, xp, split=split,
                                       bias=bias), xp)


def conv_layout(x_shape: tuple[int, ...], w_shape: tuple[int, ...], geometry: dict, dtype,
                xp, *, split: bool = True, bias: bool = True) -> list:
    """``conv_plan`` with each workspace as its spec."""
    acc: WorkspaceSpec = {"part_dw": (tuple(w_shape), dtype)}
    if bias:
        acc["part_db"] = ((w_shape[0],), dtype)
    return slice_layout(x_shape[0], lambda n: vision.conv_workspace_shapes(
        (n, *x_shape[1:]), w_shape, **geometry, dtype=dtype), xp, split=split,
        accumulators=acc)


def conv_forward(parts: list[Part], x: Array, w: Array, b: Array | None, y: Array, *,
                 epilogue: ChannelEpilogue | None = None, **geometry) -> None:
    if len(parts) == 1 and x.shape[0] == 1 and geometry.get("group", 1) == 1:
        count = batch_split.parts(get_array_module(x))
        if count > 1:
            single_image_conv(count, x, w, b, y, ws=parts[0][2], epilogue=epilogue, **geometry)
            return
    run_slices(parts, lambda xs, ys, ws: vision.conv_forward(xs, w, b, ys, ws=ws,
                                                             epilogue=epilogue, **geometry),
               x, y)


def single_image_conv(count: int, x: Array, w: Array, b: Array | None, y: Array, *, ws: dict,
                      epilogue: ChannelEpilogue | None = None, **geometry) -> None:
    """A batch of one, which cannot be split by images: im2col once, then the GEMM
    ``w (O, K) @ columns (K, OH*OW)`` split by output channels over ``count`` cores, each
    slice written straight into its rows of y (whose layout the product already has) with
    its bias added. Left to OpenBLAS's own threads instead, such small GEMMs collapsed
    whenever another thread (the predictor's decoding, another process) held a core: its
    threads wait for each other between GEMMs (SqueezeNet 1.1 at batch 1, 2 cores, loaded
    machine: 250-300 ms a forward against 12 ms on one thread)."""
    columns = vision.image_columns(x, w, ws=ws, **geometry)
    outputs = w.shape[0]
    w2, y2 = view_as(w, (outputs, columns.shape[0])), view_as(y, (outputs, columns.shape[1]))
    xp = get_array_module(x)

    def rows(lo: int, hi: int) -> None:
        xp.matmul(w2[lo:hi], columns, out=y2[lo:hi])
        if b is not None and epilogue is None:
            xp.add(y2[lo:hi], b[lo:hi, None], out=y2[lo:hi])

    if outputs * columns.shape[0] * columns.shape[1] < SPLIT_MIN_MACS:
        batch_split.run_alone(lambda: rows(0, outputs))
    else:
        batch_split.run([lambda lo=lo, hi=hi: rows(lo, hi)
                         for lo, hi in batch_split.split(outputs, count)])
    if epilogue is not None:  # the fused bias, BatchNorm, Scale and ReLU: one pass over y
        y3 = view_as(y, (1, outputs, columns.shape[1]))
        apply_epilogue(y3, y3, b, epilogue)


def conv_backward(parts: list[Part], dy: Array, x: Array, w: Array, *, dx: Array | None,
                  dw: Array | None, db: Array | None, reuse_col: bool = True,
                  **geometry) -> None:
    """``reuse_col``: the workspaces still hold the columns forward built (else backward
    rebuilds them: a layer whose columns live in shared scratch)."""
    if len(parts) == 1:
        vision.conv_backward(dy, x, w, dx=dx, dw=dw, db=db, ws=parts[0][2],
                             reuse_col=reuse_col, **geometry)
        return

    def task(dys, xs, dxs, ws):
        part_dw = ws["part_dw"] if dw is not None else None
        part_db = ws["part_db"] if db is not None else None
        for acc in (part_dw, part_db):
            if acc is not None:
                acc.fill(0)
        vision.conv_backward(dys, xs, w, dx=dxs, dw=part_dw, db=part_db, ws=ws,
                             reuse_col=reuse_col, **geometry)

    run_slices(parts, task, dy, x, dx)
    for _, _, ws in parts:
        if dw is not None:
            dw += ws["part_dw"]
        if db is not None:
            db += ws["part_db"]


# --------------------------------------------------------------------------- inner product


def linear_plan(rows: int, outputs: int, xp, *, w_shape: tuple[int, ...] | None = None,
                transpose: bool = False, dtype=None) -> tuple[list, list, list[dict]]:
    """``linear_layout`` with its stages allocated."""
    return allocate_layout(linear_layout(rows, outputs, xp, w_shape=w_shape,
                                         transpose=transpose, dtype=dtype), xp)


def linear_layout(rows: int, outputs: int, xp, *, w_shape: tuple[int, ...] | None = None,
                  transpose: bool = False, dtype=None) -> tuple[list, list, list[dict]]:
    """(row slices, output slices, a weight-gradient stage per output slice) of an inner
    product with ``rows`` samples. The stages are bounded blocks (ops.common stages dw a
    block of rows at a time), one per slice so that the cores never share one; none when
    the work runs unsplit (the layer's own workspace serves) or ``w_shape`` is not given."""
    count = batch_split.parts(xp)
    row_parts, output_parts = batch_split.split(rows, count), batch_split.split(outputs, count)
    stages = []
    if w_shape is not None and len(row_parts) > 1:
        for lo, hi in output_parts:  # the slice's own rows of W (its columns, transposed)
            part = (w_shape[0], hi - lo) if transpose else (hi - lo, w_shape[1])
            spec = linear_ops.linear_workspace_shapes(part, transpose=transpose, dtype=dtype)
            stages.append({"dw": spec["dw"]})
    return row_parts, output_parts, stages


def linear_forward(plan, x: Array, w: Array, b: Array | None, y: Array, *,
                   transpose: bool, epilogue: ChannelEpilogue | None = None) -> None:
    row_parts, output_parts = plan[0], plan[1]
    if len(row_parts) == 1 and len(output_parts) > 1:
        # One row (a batch of one) cannot be split: its outputs are, as the convolution's
        # channels are (single_image_conv), rather than left to OpenBLAS's threads. A fused
        # epilogue (with the bias) then runs once over the whole row.
        bias = b if epilogue is None else None
        batch_split.run([lambda lo=lo, hi=hi: linear_ops.linear_forward(
            x, w[:, lo:hi] if transpose else w[lo:hi], None if bias is None else bias[lo:hi],
            y[:, lo:hi], transpose=transpose) for lo, hi in output_parts])
        if epilogue is not None:
            y3 = view_as(y, (y.shape[0], y.shape[1], 1))
            apply_epilogue(y3, y3, b, epilogue)
        return
    batch_split.run([lambda lo=lo, hi=hi: linear_ops.linear_forward(
        x[lo:hi], w, b, y[lo:hi], transpose=transpose, epilogue=epilogue)
        for lo, hi in row_parts])


def linear_backward(plan, dy: Array, x: Array, w: Array, *, dx: Array | None,
                    dw: Array | None, db: Array | None, transpose: bool, ws: dict) -> None:
    row_parts, output_parts, stages = plan
    if len(row_parts) == 1:
        linear_ops.linear_backward(dy, x, w, dx=dx, dw=dw, db=db, transpose=transpose, ws=ws)
        return
    tasks = []
    if dx is not None:
        tasks += [lambda lo=lo, hi=hi: linear_ops.linear_backward(
            dy[lo:hi], x[lo:hi], w, dx=dx[lo:hi], dw=None, db=None, transpose=transpose)
            for lo, hi in row_parts]
    if dw is not None:
        tasks += [lambda lo=lo, hi=hi, k=k: _weight_rows(
            dy, x, dw, lo, hi, transpose, stages[k] if stages else None)
            for k, (lo, hi) in enumerate(output_parts)]
    batch_split.run(tasks)
    if db is not None:
        linear_ops.linear_backward(dy, x, w, dx=None, dw=None, db=db, ws=ws)


def _weight_rows(dy, x, dw, lo: int, hi: int, transpose: bool, stage: dict | None) -> None:
    """dw for outputs lo:hi (rows of W, or its columns when transposed), staged in the
    slice's own block (``stage``; None: a per-call one)."""
    if transpose:
        linear_ops.linear_backward(dy[:, lo:hi], x, None, dx=None, dw=dw[:, lo:hi], db=None,
                                   transpose=True, ws=stage)
    else:
        linear_ops.linear_backward(dy[:, lo:hi], x, None, dx=None, dw=dw[lo:hi], db=None,
                                   ws=stage)

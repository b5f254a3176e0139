"""Caffe pooling kernels MAX and AVE, forward beside backward, and the window geometry
they share with STOCHASTIC pooling (``netforge.ops.stochastic_pooling``).

Shapes: x (N, C, H, W), y (N, C, OH, OW) with OH, OW from
``netforge.ops.vision.pool_output_size`` (re-exported here). ``kernel``, ``stride``, ``pad``
take an int or an ``(h, w)`` pair; global pooling is kernel = (H, W), stride 1, pad 0.

    max_pool_workspace_shapes(x_shape, y_shape, *, kernel, stride, pad, index_dtype, dtype)
    max_pool_forward(x, y, argmax, *, kernel, stride, pad, ws)     argmax may be None
    max_pool_backward(dy, argmax, dx, *, kernel, stride, pad, ws)
    ave_pool_workspace_shapes(x_shape, y_shape, *, kernel, stride, pad, dtype) -> spec
    ave_pool_forward(x, y, *, kernel, stride, pad, ws)
    ave_pool_backward(dy, dx, *, kernel, stride, pad, ws)
    pool_geometry(x_shape, y_shape, kernel, stride, pad) -> PoolGeometry
    window_offsets(geometry)   kernel offsets with their clipped output/input slices
    window_origin(xp, geometry, dtype)   flat index of each window's top-left corner

Caffe's rules: window (oh, ow) starts at (oh*sh - ph, ow*sw - pw); MAX ignores padding and
keeps the first maximum in row-major window order (strict ``>``); AVE sums only real pixels
but divides by the window clipped to the padded extent [-p, size + p).

The loops run over the kh*kw kernel offsets, never over output pixels. MAX and AVE first
split x into its stride phases (see "polyphase planes" below), so that every kernel offset
is one contiguous slice and each per-offset op is one long ufunc call; when the windows tile
the image (stride == kernel, no pad, divisible sizes) backward writes each plane once, with
no fill and no adds; global pooling reduces over one contiguous H*W axis. STOCHASTIC works
on strided slices of x clipped to the outputs whose pixel lies in the image. Everything is a
plain ufunc: numpy's masked ``where=`` forms and its reductions over the (kh, kw) axes of a
reshaped view ran 10-30x slower (measured). Outputs and dx are assigned. Only index vectors
of length OH, OW, H*W or kh*kw (no batch or channel axis) are created per call.
"""

from __future__ import annotations

from math import prod
from typing import NamedTuple

import numpy

from netforge.ops import compiled
from netforge.ops.vision import IntPair, pool_output_size, slice_stop, valid_output_range
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, is_cupy, pair, view_as

__all__ = ["pool_output_size", "max_pool_workspace_shapes", "max_pool_forward",
           "max_pool_backward", "ave_pool_workspace_shapes", "ave_pool_forward",
           "ave_pool_backward", "PoolGeometry", "pool_geometry", "window_offsets",
           "window_origin"]

# Caffe initialises a max-pool window to -FLT_MAX (whatever the Dtype) and keeps an index of
# -1 until a value beats it; padding never takes part.
_NEG_FLT_MAX = -float(numpy.finfo(numpy.float32).max)


class PoolGeometry(NamedTuple):
    n: int
    c: int
    h: int
    w: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    tiled: bool  # windows tile the image exactly: x reshapes to (N, C, OH, kh, OW, kw)

    @property
    def is_global(self) -> bool:
        return self.tiled and self.oh == 1 and self.ow == 1


def pool_geometry(x_shape: tuple[int, ...], y_shape: tuple[int, ...], kernel: IntPair,
                  stride: IntPair, pad: IntPair) -> PoolGeometry:
    n, c, h, w = x_shape
    oh, ow = y_shape[2], y_shape[3]
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(pad)
    if ph >= kh or pw >= kw:
        raise ValueError(f"pooling: pad {(ph, pw)} must be smaller than kernel {(kh, kw)}")
    tiled = (ph == 0 and pw == 0 and oh * kh == h and ow * kw == w
             and (sh == kh or oh == 1) and (sw == kw or ow == 1))
    return PoolGeometry(n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, tiled)


def _window(geo: PoolGeometry) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, pad) as (h, w) pairs, for the compiled kernels."""
    return (geo.kh, geo.kw), (geo.sh, geo.sw), (geo.ph, geo.pw)


def window_offsets(geo: PoolGeometry):
    """Kernel offsets (i, j) in Caffe's row-major window order, with their clipped ranges.

    Yields (i, j, out_rows, out_cols, in_rows, in_cols): slices of the outputs whose window
    pixel (i, j) lies inside the image, and the strided input slices holding those pixels.
    Offsets that fall in the padding for every output are skipped.
    """
    for i in range(geo.kh):
        oh0, oh1, h0 = valid_output_range(i - geo.ph, geo.sh, geo.oh, geo.h)
        if oh1 == oh0:
            continue
        hs = slice(h0, slice_stop(h0, oh1 - oh0, geo.sh), geo.sh)
        for j in range(geo.kw):
            ow0, ow1, w0 = valid_output_range(j - geo.pw, geo.sw, geo.ow, geo.w)
            if ow1 == ow0:
                continue
            ws_ = slice(w0, slice_stop(w0, ow1 - ow0, geo.sw), geo.sw)
            yield i, j, slice(oh0, oh1), slice(ow0, ow1), hs, ws_


def window_origin(xp, geo: PoolGeometry, dtype) -> Array:
    """(OH, OW) flat index h*W + w of each window's top-left corner (may lie in the pad).

    Small (no batch or channel axis), so computing it per call is cheap.
    """
    rows = xp.arange(geo.oh, dtype=dtype) * geo.sh - geo.ph
    cols = xp.arange(geo.ow, dtype=dtype) * geo.sw - geo.pw
    return rows[:, None] * geo.w + cols[None, :]


def _align(nbytes: int) -> int:
    return -(-nbytes // 64) * 64


# --------------------------------------------------------------------------- polyphase planes
# Strided slices x[:, :, i::s, j::s] run numpy's inner loop OW elements at a time with a
# stride; on small images (OW of 8-16, N*C in the thousands) that per-row overhead is most
# of the time (measured: a 3x3/2 MAX pooling of 100x32x32x32 spent 27 ms in 54 such ops).
# So MAX and AVE pooling first split x once into its stride phases ("polyphase planes"):
# plane (a, b) holds the padded input rows a, a + sh, ... and columns b, b + sw, ..., each
# image as an (HQ, WQ) block with HQ = OH + (kh-1)//sh, WQ = OW + (kw-1)//sw, pad positions
# holding the pad value. Kernel offset (i, j) is then plane (i % sh, j % sw) shifted by
# (i // sh, j // sw): in the flat (N*C*HQ*WQ) buffer, one contiguous slice. Every per-offset
# op becomes one long contiguous ufunc call over a (N*C, HQ, WQ) buffer whose columns past
# OW and rows past OH are junk that is never read back (10-20x faster than the strided
# form); the split (and in backward the fold back into dx) costs about two strided copies.


class _Planar(NamedTuple):
    nc: int  # images x channels
    hq: int  # rows of one image in a plane / in the output buffer
    wq: int
    planes: tuple  # per stored plane: (t0, t1, r0, u0, u1, c0), its valid rows/columns
    taps: tuple  # per kernel offset, row-major: (plane index, flat shift)
    tail: int  # elements read past the last plane by the largest shift

    @property
    def length(self) -> int:  # elements of one plane / of the output buffer
        return self.nc * self.hq * self.wq

    @property
    def direct(self) -> bool:
        """The output buffer is y itself (kernel <= stride: no junk rows or columns)."""
        return self.tail == 0


def _planar(geo: PoolGeometry) -> _Planar:
    hq = geo.oh + (geo.kh - 1) // geo.sh
    wq = geo.ow + (geo.kw - 1) // geo.sw
    nph, npw = min(geo.sh, geo.kh), min(geo.sw, geo.kw)  # phases no window reads are skipped
    planes = []
    for a in range(nph):
        t0, t1, r0 = valid_output_range(a - geo.ph, geo.sh, hq, geo.h)
        for b in range(npw):
            u0, u1, c0 = valid_output_range(b - geo.pw, geo.sw, wq, geo.w)
            planes.append((t0, t1, r0, u0, u1, c0))
    taps = tuple(((i % geo.sh) * npw + j % geo.sw, (i // geo.sh) * wq + j // geo.sw)
                 for i in range(geo.kh) for j in range(geo.kw))
    tail = ((geo.kh - 1) // geo.sh) * wq + (geo.kw - 1) // geo.sw
    return _Planar(geo.n * geo.c, hq, wq, tuple(planes), taps, tail)


def _score_dtype(geo: PoolGeometry):
    """Smallest unsigned type holding kh*kw + 1 window positions (0 = no maximum)."""
    k = geo.kh * geo.kw
    return numpy.dtype(numpy.uint8 if k < 255 else numpy.uint16 if k < 65535 else numpy.uint32)


def _plane_bytes(geo: PoolGeometry, itemsize: int) -> list[int]:
    """Byte sizes of the carved arrays: planes, buf, prod, score, flag, rel (intp: numpy's
    ``take`` converts any other index type into a new array)."""
    pl = _planar(geo)
    sd = _score_dtype(geo).itemsize
    count = len(pl.planes) * pl.length + pl.tail
    ny = prod((geo.n, geo.c, geo.oh, geo.ow))
    return [count * itemsize, pl.length * itemsize, pl.length * itemsize, pl.length * sd,
            pl.length * sd, ny * numpy.dtype(numpy.intp).itemsize]


def _pool_scratch_spec(x_shape, y_shape, kernel, stride, pad, dtype,
                       index_dtype) -> WorkspaceSpec:
    geo = pool_geometry(x_shape, y_shape, kernel, stride, pad)
    itemsize = 8 if dtype is None else numpy.dtype(dtype).itemsize
    if geo.is_global:
        nbytes = _align(int(prod(x_shape)))  # backward's bool mask
    else:
        nbytes = sum(_align(b) for b in _plane_bytes(geo, itemsize))
    return {"scratch": ((nbytes,), numpy.dtype(numpy.uint8)),
            "index": ((y_shape[2], y_shape[3]), numpy.dtype(index_dtype))}


def _carve_planar(ws: dict, geo: PoolGeometry, dtype) -> tuple[Array, ...]:
    """(planes (flat), buf, prod, score, flag (flat), rel (N*C, OH, OW)) from ws["scratch"]."""
    pl = _planar(geo)
    dt, idt, sd = numpy.dtype(dtype), numpy.dtype(numpy.intp), _score_dtype(geo)
    sizes = _plane_bytes(geo, dt.itemsize)
    raw = ws["scratch"]
    if raw.size < sum(_align(b) for b in sizes):
        raise ValueError(f"pooling workspace of {raw.size} bytes is too small for {dt} data "
                         f"(give the workspace spec the data dtype)")
    out, at = [], 0
    for nbytes, kind in zip(sizes, (dt, dt, dt, sd, sd, idt), strict=True):
        out.append(raw[at:at + nbytes].view(kind))
        at += _align(nbytes)
    out[5] = out[5].reshape(pl.nc, geo.oh, geo.ow)
    return tuple(out)


def _tap(flat: Array, pl: _Planar, k: int) -> Array:
    """Kernel offset k's view: its plane shifted by the offset, as one flat slice."""
    plane, shift = pl.taps[k]
    start = plane * pl.length + shift
    return flat[start:start + pl.length]


def _plane_grid(flat: Array, pl: _Planar, p: int) -> Array:
    return flat[p * pl.length:(p + 1) * pl.length].reshape(pl.nc, pl.hq, pl.wq)


def _split(xp, x: Array, flat: Array, geo: PoolGeometry, pl: _Planar, fill: float) -> None:
    """Copy x (N, C, H, W) into the planes; pad and overhang positions get ``fill``."""
    x3 = view_as(x, (pl.nc, geo.h, geo.w))
    for p, (t0, t1, r0, u0, u1, c0) in enumerate(pl.planes):
        grid = _plane_grid(flat, pl, p)
        if t1 <= t0 or u1 <= u0:
            grid.fill(fill)
            continue
        rows = slice(r0, slice_stop(r0, t1 - t0, geo.sh), geo.sh)
        cols = slice(c0, slice_stop(c0, u1 - u0, geo.sw), geo.sw)
        xp.copyto(grid[:, t0:t1, u0:u1], x3[:, rows, cols])
        if t0 > 0:
            grid[:, :t0].fill(fill)
        if t1 < pl.hq:
            grid[:, t1:].fill(fill)
        if u0 > 0:
            grid[:, t0:t1, :u0].fill(fill)
        if u1 < pl.wq:
            grid[:, t0:t1, u1:].fill(fill)
    if pl.tail:
        flat[len(pl.planes) * pl.length:].fill(fill)


def _fold(xp, flat: Array, dx: Array, geo: PoolGeometry, pl: _Planar) -> None:
    """dx (N, C, H, W), assigned: each real pixel's entry of the planes; pixels that no window
    reads (strides larger than the kernel, rows past the last window) get 0."""
    dx3 = view_as(dx, (pl.nc, geo.h, geo.w))
    covered = sum((t1 - t0) * (u1 - u0) for t0, t1, _, u0, u1, _ in pl.planes
                  if t1 > t0 and u1 > u0)
    if covered < geo.h * geo.w:
        dx3.fill(0)
    for p, (t0, t1, r0, u0, u1, c0) in enumerate(pl.planes):
        if t1 > t0 and u1 > u0:
            xp.copyto(dx3[:, r0:slice_stop(r0, t1 - t0, geo.sh):geo.sh,
                          c0:slice_stop(c0, u1 - u0, geo.sw):geo.sw],
                      _plane_grid(flat, pl, p)[:, t0:t1, u0:u1])


def _output_buffer(buf: Array, y: Array, geo: PoolGeometry, pl: _Planar) -> Array:
    """The flat (N*C*HQ*WQ) buffer that per-offset results go to: y itself when it has no
    junk rows or columns, else the workspace buffer."""
    return view_as(y, (pl.length,)) if pl.direct else buf


def _valid(flat: Array, geo: PoolGeometry, pl: _Planar) -> Array:
    """The (N*C, OH, OW) valid part of a flat output-shaped buffer."""
    return flat.reshape(pl.nc, pl.hq, pl.wq)[:, :geo.oh, :geo.ow]


# --------------------------------------------------------------------------- MAX


def max_pool_workspace_shapes(x_shape: tuple[int, ...], y_shape: tuple[int, ...], *,
                              kernel: IntPair, stride: IntPair, pad: IntPair = 0,
                              index_dtype: numpy.dtype = numpy.intp,
                              dtype: numpy.dtype | None = None) -> WorkspaceSpec:
    """Scratch for MAX pooling with this window geometry.

    ``scratch``: raw bytes carved into the polyphase planes (about x's size), an output-
    shaped buffer and product, two window-position arrays and an index temporary (see
    ``_carve_planar``); ``index`` (OH, OW) of the argmax dtype. ``dtype`` is the data dtype
    (None: room for 8-byte data, which suits any float).
    """
    return _pool_scratch_spec(x_shape, y_shape, kernel, stride, pad, dtype, index_dtype)


def max_pool_forward(x: Array, y: Array, argmax: Array | None, *, kernel: IntPair,
                     stride: IntPair, pad: IntPair = 0, ws: dict) -> None:
    """Caffe MAX pooling.

    Args:
        x: (N, C, H, W) input.
        y: (N, C, OH, OW) output (sizes from ``pool_output_size``), assigned.
        argmax: (N, C, OH, OW) integer array, assigned the flat index h*W + w of each
            window's maximum, or None when no backward will follow (predict): then only the
            maxima are computed. Padding never wins and NaN is skipped; among equal values
            the first in row-major window order wins (Caffe's strict ``>`` scan). A window
            with no pixel (ceil mode, stride > kernel, no pad) gets y = -FLT_MAX and index
            -1, as in Caffe. (Caffe would also give -1 for a window whose pixels are all
            <= -FLT_MAX; here such a pixel's own index is reported.)
        ws: workspace from ``max_pool_workspace_shapes``.

    On the polyphase planes (see above): y = fmax over the kh*kw shifted views (pad = -inf,
    start -FLT_MAX); then the first maximum's window position as a score kh*kw - k (0: none),
    the largest over k of (view_k == y) * (kh*kw - k), turned into Caffe's flat index by one
    table lookup. All plain ufuncs on contiguous buffers (numpy's masked ``where=`` forms ran
    10-30x slower, measured).
    """
    xp = get_array_module(x)
    geo = pool_geometry(x.shape, y.shape, kernel, stride, pad)
    if is_cupy(xp):  # one CuPy kernel, no scratch (netforge/ops/cuda/pooling.py)
        from netforge.ops.cuda import pooling as cuda_pooling
        return cuda_pooling.max_pool_forward(x, y, argmax, geo)
    if geo.is_global:
        x3 = view_as(x, (geo.n, geo.c, geo.h * geo.w))
        if argmax is not None:
            xp.argmax(x3, axis=2, out=view_as(argmax, (geo.n, geo.c)))
        xp.max(x3, axis=2, out=view_as(y, (geo.n, geo.c)))
        return
    if compiled.active(x, y, argmax):
        compiled.load("pooling").max_pool_forward(x, y, argmax, *_window(geo))
        return
    pl = _planar(geo)
    planes, buf, _, score, flag, rel = _carve_planar(ws, geo, x.dtype)
    _split(xp, x, planes, geo, pl, -numpy.inf)
    out = _output_buffer(buf, y, geo, pl)
    out.fill(_NEG_FLT_MAX)
    for k in range(len(pl.taps)):
        xp.fmax(out, _tap(planes, pl, k), out=out)
    if not pl.direct:
        xp.copyto(view_as(y, (pl.nc, geo.oh, geo.ow)), _valid(out, geo, pl))
    if argmax is None:
        return
    count = len(pl.taps)
    score.fill(0)
    for k in range(count):
        xp.equal(_tap(planes, pl, k), out, out=flag)
        xp.multiply(flag, flag.dtype.type(count - k), out=flag)
        xp.maximum(score, flag, out=score)
    # score s -> flat index: window origin + offset (i*W + j) of position k = count - s.
    table = numpy.empty(count + 1, dtype=argmax.dtype)
    table[0] = -(1 << 30)  # no maximum: clamped to -1 below
    for k in range(count):
        table[count - k] = (k // geo.kw) * geo.w + k % geo.kw
    arg3 = view_as(argmax, (pl.nc, geo.oh, geo.ow))
    xp.copyto(rel, _valid(score, geo, pl))
    xp.take(xp.asarray(table), rel, out=arg3, mode="clip")
    origin = ws["index"]
    origin[...] = window_origin(xp, geo, origin.dtype)
    xp.add(arg3, origin, out=arg3, casting="unsafe")
    xp.maximum(arg3, -1, out=arg3)


def max_pool_backward(dy: Array, argmax: Array, dx: Array, *, kernel: IntPair,
                      stride: IntPair, pad: IntPair = 0, ws: dict) -> None:
    """dx (N, C, H, W), assigned: each dy (N, C, OH, OW) added at its window's argmax.

    The flat argmax is turned back into window positions (one table lookup), then per kernel
    offset the dy of the windows whose maximum sits there is added into that offset's shifted
    view of gradient planes, which are folded into dx at the end. When the windows tile the
    image, each offset's dx pixels are written once, straight from a compare of argmax.
    """
    xp = get_array_module(dy)
    geo = pool_geometry(dx.shape, dy.shape, kernel, stride, pad)
    if is_cupy(xp):
        from netforge.ops.cuda import pooling as cuda_pooling
        return cuda_pooling.max_pool_backward(dy, argmax, dx, geo)
    if geo.is_global:
        # One compare against 0..H*W-1 marks every argmax; the product places dy there.
        hw = geo.h * geo.w
        mask3 = ws["scratch"][:dx.size].view(bool).reshape(geo.n, geo.c, hw)
        xp.equal(view_as(argmax, (geo.n, geo.c, 1)), xp.arange(hw, dtype=argmax.dtype),
                 out=mask3)
        xp.multiply(mask3, view_as(dy, (geo.n, geo.c, 1)), out=view_as(dx, (geo.n, geo.c, hw)))
        return
    if compiled.active(dy, argmax, dx):
        compiled.load("pooling").max_pool_backward(dy, argmax, dx)
        return
    pl = _planar(geo)
    planes, buf, prod, score, flag, rel = _carve_planar(ws, geo, dy.dtype)
    if geo.tiled:
        # Disjoint windows: every dx pixel is written exactly once, straight from one compare
        # of argmax per offset (no planes: measured faster for these, 2x2/2 on LeNet).
        index, origin = ws["index"], window_origin(xp, geo, ws["index"].dtype)
        eq = flag.view(numpy.uint8)[:dy.size].view(bool).reshape(dy.shape)
        dx6 = view_as(dx, (geo.n, geo.c, geo.oh, geo.kh, geo.ow, geo.kw))
        for i in range(geo.kh):
            for j in range(geo.kw):
                xp.add(origin, i * geo.w + j, out=index)
                xp.equal(argmax, index, out=eq)
                xp.multiply(dy, eq, out=dx6[:, :, :, i, :, j])
        return
    count = len(pl.taps)
    # Window position k of each argmax: rel = argmax - origin + 1 (0 for argmax -1), then
    # score = count - k through a table over rel (zero for anything else).
    origin = ws["index"]
    origin[...] = window_origin(xp, geo, origin.dtype)
    origin -= 1
    arg3 = view_as(argmax, (pl.nc, geo.oh, geo.ow))
    xp.subtract(arg3, origin, out=rel, casting="unsafe")
    valid = _valid(flag, geo, pl)
    xp.greater_equal(arg3, 0, out=valid)
    xp.multiply(rel, valid, out=rel, casting="unsafe")
    span = (geo.kh - 1) * geo.w + geo.kw + 2
    table = numpy.zeros(span, dtype=score.dtype)
    for k in range(count):
        table[(k // geo.kw) * geo.w + k % geo.kw + 1] = count - k
    if pl.direct:
        xp.take(xp.asarray(table), rel, out=score.reshape(rel.shape), mode="clip")
    else:  # take into a contiguous array (a strided ``out`` makes numpy buffer a copy)
        staged = flag[:rel.size].reshape(rel.shape)
        xp.take(xp.asarray(table), rel, out=staged, mode="clip")
        score.fill(0)
        xp.copyto(_valid(score, geo, pl), staged)
    # dy into the output-shaped buffer; its junk rows/columns must be 0, not garbage.
    if pl.direct:
        grad = view_as(dy, (pl.length,))
    else:
        grad = buf
        grad.fill(0)
        xp.copyto(_valid(grad, geo, pl), view_as(dy, (pl.nc, geo.oh, geo.ow)))
    mask = flag.view(bool) if flag.dtype.itemsize == 1 else flag
    planes.fill(0)
    for k in range(count):
        xp.equal(score, score.dtype.type(count - k), out=mask)
        xp.multiply(grad, mask, out=prod)
        view = _tap(planes, pl, k)
        xp.add(view, prod, out=view)
    _fold(xp, planes, dx, geo, pl)


# --------------------------------------------------------------------------- AVE


def _ave_scale(xp, geo: PoolGeometry, dtype) -> Array:
    """(OH, OW) 1/window size, the window clipped to the padded extent [-p, H+p) (Caffe).

    Without padding, ceil mode with stride > kernel can place a last window wholly past the
    image, where Caffe divides 0 by 0; such a window averages to 0 here instead of NaN.
    """
    def sizes(out, k, s, p, size):
        start = xp.arange(out) * s - p
        return xp.minimum(start + k, size + p) - start

    area = sizes(geo.oh, geo.kh, geo.sh, geo.ph, geo.h)[:, None] * sizes(
        geo.ow, geo.kw, geo.sw, geo.pw, geo.w)[None, :]
    scale = xp.zeros(area.shape, dtype=dtype)
    xp.divide(1.0, area, out=scale, where=area > 0, casting="unsafe")
    return scale


def ave_pool_workspace_shapes(x_shape: tuple[int, ...], y_shape: tuple[int, ...], *,
                              kernel: IntPair, stride: IntPair, pad: IntPair = 0,
                              dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """Scratch for AVE pooling with this window geometry: MAX pooling's polyphase planes and
    output buffer (see ``max_pool_workspace_shapes``)."""
    return _pool_scratch_spec(x_shape, y_shape, kernel, stride, pad, dtype, numpy.intp)


def ave_pool_forward(x: Array, y: Array, *, kernel: IntPair, stride: IntPair,
                     pad: IntPair = 0, ws: dict) -> None:
    """Caffe AVE pooling: x (N, C, H, W) -> y (N, C, OH, OW), assigned.

    Sums only real pixels but divides by the window clipped to the padded extent, so border
    windows count their padding as zeros and ceil-mode overhang beyond the padding not at all.
    """
    xp = get_array_module(x)
    geo = pool_geometry(x.shape, y.shape, kernel, stride, pad)
    if is_cupy(xp):
        from netforge.ops.cuda import pooling as cuda_pooling
        return cuda_pooling.ave_pool_forward(x, y, geo)
    if geo.is_global:  # one reduction over a contiguous axis
        xp.sum(view_as(x, (geo.n, geo.c, geo.h * geo.w)), axis=2,
               out=view_as(y, (geo.n, geo.c)))
        xp.multiply(y, 1.0 / (geo.h * geo.w), out=y)
        return
    if compiled.active(x, y):
        compiled.load("pooling").ave_pool_forward(x, y, *_window(geo))
        return
    pl = _planar(geo)
    planes, buf, _, _, _, _ = _carve_planar(ws, geo, x.dtype)
    _split(xp, x, planes, geo, pl, 0.0)
    out = _output_buffer(buf, y, geo, pl)
    if len(pl.taps) == 1:
        xp.copyto(out, _tap(planes, pl, 0))
    else:
        xp.add(_tap(planes, pl, 0), _tap(planes, pl, 1), out=out)
    for k in range(2, len(pl.taps)):
        xp.add(out, _tap(planes, pl, k), out=out)
    y3 = view_as(y, (pl.nc, geo.oh, geo.ow))
    if geo.tiled:
        xp.multiply(y3 if pl.direct else _valid(out, geo, pl), 1.0 / (geo.kh * geo.kw), out=y3)
    else:
        xp.multiply(y3 if pl.direct else _valid(out, geo, pl), _ave_scale(xp, geo, y.dtype),
                    out=y3)


def ave_pool_backward(dy: Array, dx: Array, *, kernel: IntPair, stride: IntPair,
                      pad: IntPair = 0, ws: dict) -> None:
    """dx (N, C, H, W), assigned: dy (N, C, OH, OW) / window size spread over each window."""
    xp = get_array_module(dy)
    geo = pool_geometry(dx.shape, dy.shape, kernel, stride, pad)
    if is_cupy(xp):
        from netforge.ops.cuda import pooling as cuda_pooling
        return cuda_pooling.ave_pool_backward(dy, dx, geo)
    if geo.is_global:
        xp.multiply(view_as(dy, (geo.n, geo.c, 1)), 1.0 / (geo.h * geo.w),
                    out=view_as(dx, (geo.n, geo.c, geo.h * geo.w)))
        return
    if compiled.active(dy, dx):
        compiled.load("pooling").ave_pool_backward(dy, dx, *_window(geo))
        return
    if geo.tiled:
        # Disjoint windows: one strided write per offset (a single broadcasting multiply
        # into the 6-D view ran 4x slower, its inner loop being kw long).
        dx6 = view_as(dx, (geo.n, geo.c, geo.oh, geo.kh, geo.ow, geo.kw))
        for i in range(geo.kh):
            for j in range(geo.kw):
                xp.multiply(dy, 1.0 / (geo.kh * geo.kw), out=dx6[:, :, :, i, :, j])
        return
    pl = _planar(geo)
    planes, buf, _, _, _, _ = _carve_planar(ws, geo, dy.dtype)
    if not pl.direct:
        buf.fill(0)  # junk rows/columns spread nothing
    xp.multiply(view_as(dy, (pl.nc, geo.oh, geo.ow)), _ave_scale(xp, geo, dy.dtype),
                out=_valid(buf, geo, pl))
    planes.fill(0)
    for k in range(len(pl.taps)):
        view = _tap(planes, pl, k)
        xp.add(view, buf, out=view)
    _fold(xp, planes, dx, geo, pl)

"""Convolution kernels (im2col + GEMM), forward beside backward, and the window geometry.

Shapes: x (N, C, H, W), w (O, C/group, kh, kw), y (N, O, OH, OW). ``kernel``, ``pad``,
``stride`` and ``dilation`` take an int or an ``(h, w)`` pair.

    conv_output_size(size, kernel, pad, stride, dilation) -> int
    pool_output_size(size, kernel, pad, stride, ceil_mode=True) -> int
    im2col(x, col, *, kernel, pad, stride, dilation)             col (C*kh*kw, N*OH*OW)
    col2im(col, dx, *, kernel, pad, stride, dilation)            dx (N, C, H, W), assigned
    im2col_images(x, cols, *, kernel, pad, stride, dilation)     cols (N, C*kh*kw, OH, OW)
    col2im_images(cols, dx, *, kernel, pad, stride, dilation)    dx (N, C, H, W), assigned
    conv_workspace_shapes(x_shape, w_shape, *, stride, pad, dilation, group, dtype) -> spec
    conv_forward(x, w, b, y, *, stride, pad, dilation, group, ws)
    conv_backward(dy, x, w, *, dx, dw, db, stride, pad, dilation, group, ws, reuse_col=False)
    add_channel_bias(y, b)                                       y (N, C, H, W) += b[c]
    add_bias_gradient(dy3, db, stage)                            db += Σ_{n,l} dy3[n, c, l]
    valid_output_range(offset, stride, out_size, in_size)        outputs whose tap is inside
    slice_stop(start, count, step)                               stop of a strided slice

Deconvolution (``netforge.ops.deconv``) is built from these convolution kernels. Pooling lives
in ``netforge.ops.pooling`` (MAX, AVE) and ``netforge.ops.stochastic_pooling``; its output
size and the window arithmetic both share are here, beside convolution's.

Outputs and bottom gradients (``y``, ``dx``) are assigned; parameter gradients (``dw``,
``db``) are accumulated (``+=``), as Caffe does for ``iter_size`` and shared params. Scratch
memory comes from ``ws`` (see ``netforge.ops.xp``); nothing proportional to the data is
allocated per call.

Convolution: one GEMM over the whole batch, ``w (G, O/G, K) @ col (G, K, N*OH*OW)`` with
``K = C/G*kh*kw``; groups are the batch dimension of that one matmul call, and the weight
gradient is likewise one GEMM with inner size N*OH*OW. (Measured: a per-sample batched
matmul avoids the output transpose but runs N small GEMMs and loses on LeNet's shapes.)
Only when the column matrix would outgrow the cache (``_COL_BUDGET``) is the batch split
into chunks of images, each of them one GEMM.
The column matrix comes in two layouts, chosen by a measured cost model (``_RUN_COST``):

- "nchw": columns ordered (n, oh, ow). im2col copies runs of OW contiguous pixels; the
  product (O, N, L) is transposed into y with runs of L. Best for wide outputs and few
  input channels (LeNet conv1).
- "chwn": x is first transposed to (C, H, W, N) so that im2col copies runs of OW*N; costs
  2-D transposes of x and y, but numpy's per-run overhead dominates when OW is small
  (LeNet conv2: im2col 6x, col2im 5x faster than "nchw").

A 3x3 stride-1 ungrouped layer whose shape the measured rule of ``netforge.ops.winograd``
accepts runs forward by Winograd F(2x2, 3x3) instead (its workspace then holds the tile
arrays besides the columns, which backward rebuilds).

A 1x1, stride-1, unpadded convolution skips im2col: x (N, C, H*W) already is a stack of
column matrices, and y = w @ x[n] is one batched matmul.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy

from netforge.ops import compiled, winograd
from netforge.ops.fused import ChannelEpilogue, apply_epilogue
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, is_cupy, pair, view_as

IntPair = int | tuple[int, int]

# Layout choice. "nchw" pays numpy's per-run overhead once per OW-long run of the column
# matrix, C*kh*kw*N*OH runs; "chwn" pays 2-D transposes of x, y (and dy, dx), about
# N*OH*OW*(C + O) elements. One run costs about this many transposed elements (measured on
# LeNet's conv1/conv2 and 3x3 layers of 16-64 channels, widths 8-32).
_RUN_COST = 8
# Images per chunk: the batch is convolved in chunks whose column matrix holds at most this
# many elements (8 MB in float32), so that it stays in the last-level cache between im2col
# and the GEMMs. Measured: LeNet's convolutions run best as one chunk (2M elements for conv2),
# a ResNet 3x3 layer (1.8M elements per image) per image, 1.4x faster than as one batch.
_COL_BUDGET = 1 << 21
# A 1x1 convolution's weight gradient is a per-sample batched GEMM (summed over N) when each
# sample has at least this many pixels, else one big GEMM on transposed copies; measured
# crossover on 2 cores.
_POINTWISE_BATCHED_MIN_PIXELS = 128


def conv_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int = 1) -> int:
    """Caffe's convolution output size: floor((size + 2p - (d(k-1)+1)) / s) + 1."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def pool_output_size(size: int, kernel: int, pad: int, stride: int,
                     ceil_mode: bool = True) -> int:
    """Caffe's pooling output size; with padding, a last window starting in the pad is dropped.

    ceil((size + 2p - k) / s) + 1 (floor when ``ceil_mode`` is False), then minus one if
    (out - 1) * s >= size + p.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def valid_output_range(offset: int, stride: int, out_size: int,
                       in_size: int) -> tuple[int, int, int]:
    """Outputs o in [o0, o1) whose input index o*stride + offset lies in [0, in_size).

    Returns (o0, o1, first input index). Lets the offset loops below skip padding instead of
    materialising a padded copy of the input.
    """
    o0 = max(0, -(offset // stride))  # ceil(-offset / stride)
    o1 = min(out_size, (in_size - 1 - offset) // stride + 1)
    o1 = max(o0, o1)
    return o0, o1, o0 * stride + offset


def slice_stop(start: int, count: int, step: int) -> int:
    """Slice stop for ``count`` elements from ``start`` with ``step`` (never past the last)."""
    return start + (count - 1) * step + 1


# --------------------------------------------------------------------------- im2col


def _unfold(src: Array, col7: Array, kernel: tuple[int, int], pad: tuple[int, int],
            stride: tuple[int, int], dilation: tuple[int, int]) -> None:
    """src (P, Q, H, W, R) -> col7 (P, kh, kw, Q, OH, OW, R); zero where a window is in pad.

    Unpadded: a single copy from a 7-D strided view of src (measured 15-40% faster than a
    loop of copies). Padded: one copy per kernel offset of the in-image part of its slab,
    with the slab's padded border zeroed, so that no padded copy of the input is made.
    """
    xp = get_array_module(src)
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    h, w = src.shape[2], src.shape[3]
    oh, ow = col7.shape[4], col7.shape[5]
    if ph == 0 and pw == 0:
        s_p, s_q, s_h, s_w, s_r = src.strides
        view = xp.lib.stride_tricks.as_strided(
            src, col7.shape, (s_p, dh * s_h, dw * s_w, s_q, sh * s_h, sw * s_w, s_r))
        xp.copyto(col7, view)
        return
    for i in range(kh):
        oh0, oh1, h0 = valid_output_range(i * dh - ph, sh, oh, h)
        for j in range(kw):
            ow0, ow1, w0 = valid_output_range(j * dw - pw, sw, ow, w)
            slab = col7[:, i, j]
            if oh0 > 0:
                slab[:, :, :oh0] = 0
            if oh1 < oh:
                slab[:, :, oh1:] = 0
            if ow0 > 0:
                slab[:, :, oh0:oh1, :ow0] = 0
            if ow1 < ow:
                slab[:, :, oh0:oh1, ow1:] = 0
            if oh1 > oh0 and ow1 > ow0:
                xp.copyto(slab[:, :, oh0:oh1, ow0:ow1],
                          src[:, :, h0:slice_stop(h0, oh1 - oh0, sh):sh,
                              w0:slice_stop(w0, ow1 - ow0, sw):sw])


def _fold(col7: Array, dst: Array, kernel: tuple[int, int], pad: tuple[int, int],
          stride: tuple[int, int], dilation: tuple[int, int]) -> None:
    """col7 (P, kh, kw, Q, OH, OW, R) -> dst (P, Q, H, W, R), summing overlaps; dst assigned.

    Overlapping windows make this a scatter-add: kh*kw strided in-place adds.
    """
    xp = get_array_module(col7)
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    h, w = dst.shape[2], dst.shape[3]
    oh, ow = col7.shape[4], col7.shape[5]
    dst[...] = 0
    for i in range(kh):
        oh0, oh1, h0 = valid_output_range(i * dh - ph, sh, oh, h)
        for j in range(kw):
            ow0, ow1, w0 = valid_output_range(j * dw - pw, sw, ow, w)
            if oh1 > oh0 and ow1 > ow0:
                d = dst[:, :, h0:slice_stop(h0, oh1 - oh0, sh):sh,
                        w0:slice_stop(w0, ow1 - ow0, sw):sw]
                xp.add(d, col7[:, i, j, :, oh0:oh1, ow0:ow1], out=d)


def _window(kernel: IntPair, pad: IntPair, stride: IntPair, dilation: IntPair) -> tuple:
    return pair(kernel), pair(pad), pair(stride), pair(dilation)


def _conv_out_hw(h: int, w: int, win: tuple) -> tuple[int, int]:
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = win
    return conv_output_size(h, kh, ph, sh, dh), conv_output_size(w, kw, pw, sw, dw)


def im2col(x: Array, col: Array, *, kernel: IntPair, pad: IntPair = 0, stride: IntPair = 1,
           dilation: IntPair = 1) -> None:
    """Unfold x (N, C, H, W) into col (C*kh*kw, N*OH*OW): rows (c, i, j), columns (n, oh, ow).

    With N == 1 this is Caffe's per-image column buffer (C*kh*kw, OH*OW).
    """
    win = _window(kernel, pad, stride, dilation)
    n, c, h, w = x.shape
    oh, ow = _conv_out_hw(h, w, win)
    (kh, kw) = win[0]
    _unfold(x.transpose(1, 0, 2, 3)[..., None], view_as(col, (c, kh, kw, n, oh, ow, 1)), *win)


def col2im(col: Array, dx: Array, *, kernel: IntPair, pad: IntPair = 0, stride: IntPair = 1,
           dilation: IntPair = 1) -> None:
    """Fold col (C*kh*kw, N*OH*OW) back into dx (N, C, H, W), summing overlaps; dx assigned."""
    win = _window(kernel, pad, stride, dilation)
    n, c, h, w = dx.shape
    oh, ow = _conv_out_hw(h, w, win)
    (kh, kw) = win[0]
    _fold(view_as(col, (c, kh, kw, n, oh, ow, 1)), dx.transpose(1, 0, 2, 3)[..., None], *win)


def im2col_images(x: Array, cols: Array, *, kernel: IntPair, pad: IntPair = 0,
                  stride: IntPair = 1, dilation: IntPair = 1) -> None:
    """Unfold x (N, C, H, W) into cols (N, C*kh*kw, OH, OW), assigned: Caffe's Im2col layer.

    Rows per image in Caffe's order (c, i, j). Channels unfold independently, so the batch
    and channel axes merge into one leading axis of the shared unfold, with no transpose.
    """
    win = _window(kernel, pad, stride, dilation)
    n, c, h, w = x.shape
    (kh, kw) = win[0]
    oh, ow = cols.shape[2], cols.shape[3]
    _unfold(view_as(x, (n * c, 1, h, w, 1)), view_as(cols, (n * c, kh, kw, 1, oh, ow, 1)), *win)


def col2im_images(cols: Array, dx: Array, *, kernel: IntPair, pad: IntPair = 0,
                  stride: IntPair = 1, dilation: IntPair = 1) -> None:
    """Fold cols (N, C*kh*kw, OH, OW) back into dx (N, C, H, W), summing overlaps; assigned.

    The adjoint of ``im2col_images`` (the Im2col layer's backward).
    """
    win = _window(kernel, pad, stride, dilation)
    n, c, h, w = dx.shape
    (kh, kw) = win[0]
    oh, ow = cols.shape[2], cols.shape[3]
    _fold(view_as(cols, (n * c, kh, kw, 1, oh, ow, 1)), view_as(dx, (n * c, 1, h, w, 1)), *win)


# --------------------------------------------------------------------------- convolution


class _ConvGeom(NamedTuple):
    n: int  # images in this call (or in this chunk)
    c: int
    h: int
    w: int
    o: int
    g: int
    oh: int
    ow: int
    win: tuple  # ((kh, kw), (ph, pw), (sh, sw), (dh, dw))
    mode: str  # "pointwise", "nchw" or "chwn" (see the module docstring)
    nb: int  # images per chunk (see _COL_BUDGET)

    @property
    def kh(self) -> int:
        return self.win[0][0]

    @property
    def kw(self) -> int:
        return self.win[0][1]

    @property
    def k(self) -> int:  # GEMM inner size per group
        return self.c // self.g * self.kh * self.kw

    @property
    def lp(self) -> int:  # output pixels per image
        return self.oh * self.ow

    @property
    def m(self) -> int:  # GEMM columns: every output pixel of the images at hand
        return self.n * self.lp

    @property
    def batched_wgrad(self) -> bool:
        return self.mode == "pointwise" and self.lp >= _POINTWISE_BATCHED_MIN_PIXELS


def _conv_geom(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: IntPair,
               pad: IntPair, dilation: IntPair, group: int) -> _ConvGeom:
    n, c, h, w = x_shape
    o, cg, kh, kw = w_shape
    if c != cg * group or o % group:
        raise ValueError(f"convolution: x {tuple(x_shape)} and w {tuple(w_shape)} do not fit "
                         f"group={group} (need C == w.shape[1] * group and O % group == 0)")
    win = _window((kh, kw), pad, stride, dilation)
    oh, ow = _conv_out_hw(h, w, win)
    if oh < 1 or ow < 1:
        raise ValueError(f"convolution: window {win[0]} (pad {win[1]}, dilation {win[3]}) "
                         f"does not fit input {tuple(x_shape)}")
    if win[0] == (1, 1) and win[1] == (0, 0) and win[2] == (1, 1):
        mode = "pointwise"
    elif c * kh * kw * _RUN_COST > ow * (c + o):
        mode = "chwn"
    else:
        mode = "nchw"
    nb = max(1, min(n, _COL_BUDGET // (c * kh * kw * oh * ow)))
    return _ConvGeom(n, c, h, w, o, group, oh, ow, win, mode, nb)


def _chunks(geo: _ConvGeom):
    """(lo, hi, geometry of images lo:hi) for each chunk of at most ``nb`` images."""
    for lo in range(0, geo.n, geo.nb):
        hi = min(geo.n, lo + geo.nb)
        yield lo, hi, geo._replace(n=hi - lo)


def _ws(ws: dict, name: str, shape: tuple[int, ...]) -> Array:
    """The front of a workspace array viewed as ``shape`` (a last chunk may be shorter)."""
    a = ws[name]
    size = 1
    for d in shape:
        size *= d
    return view_as(a, (a.size,))[:size].reshape(shape)


def conv_workspace_shapes(x_shape: tuple[int, ...], w_shape: tuple[int, ...], *,
                          stride: IntPair = 1, pad: IntPair = 0, dilation: IntPair = 1,
                          group: int = 1, dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """Scratch arrays for ``conv_forward``/``conv_backward`` on these shapes.

    With M = (images per chunk) * OH * OW: ``col`` (C*kh*kw, M) holds the unfolded input and,
    in backward, its gradient; ``top`` (O, M) the GEMM product / the transposed top
    gradient; ``xt`` (C, H, W, images per chunk) the batch-innermost input / input gradient
    (layout "chwn" only); ``ones`` (M,) the bias-gradient GEMV's vector; ``dw`` and ``db``
    stage the parameter gradients before they are accumulated. A 1x1 stride-1 unpadded
    convolution on large images needs only ``dw_batch`` (N, O, C/group) besides those two.
    """
    geo = _conv_geom(x_shape, w_shape, stride, pad, dilation, group)
    dt = numpy.dtype(dtype)
    spec: WorkspaceSpec = {"dw": (tuple(w_shape), dt), "db": ((geo.o,), dt)}
    if winograd.applies(x_shape, w_shape, stride=stride, pad=pad, dilation=dilation,
                        group=group):  # forward by Winograd; backward still needs the rest
        spec.update(winograd.workspace_shapes(x_shape, w_shape, pad=pad, dtype=dt))
    if geo.batched_wgrad:
        spec["dw_batch"] = ((geo.n, geo.o, geo.c // geo.g), dt)
        return spec
    m = geo.nb * geo.lp
    spec["col"] = ((geo.g * geo.k, m), dt)
    spec["top"] = ((geo.o, m), dt)
    spec["ones"] = ((m,), dt)
    if geo.mode == "chwn":
        spec["xt"] = ((geo.c, geo.h, geo.w, geo.nb), dt)
    return spec


def _columns(x: Array, geo: _ConvGeom, ws: dict) -> None:
    """im2col of the images x (geo.n of them) into ws["col"], in the geometry's layout."""
    xp = get_array_module(x)
    c, kh, kw, n, oh, ow = geo.c, geo.kh, geo.kw, geo.n, geo.oh, geo.ow
    if geo.mode == "chwn":
        xt = _ws(ws, "xt", (c, geo.h, geo.w, n))
        xp.copyto(xt, x.transpose(1, 2, 3, 0))
        _unfold(xt[:, None], _ws(ws, "col", (c, kh, kw, 1, oh, ow, n)), *geo.win)
    else:
        _unfold(x.transpose(1, 0, 2, 3)[..., None], _ws(ws, "col", (c, kh, kw, n, oh, ow, 1)),
                *geo.win)


def _top_as_nol(geo: _ConvGeom, ws: dict) -> Array:
    """The (N, O, OH*OW) view of the (O, N*OH*OW) GEMM product, whatever its column order."""
    if geo.mode == "chwn":
        return _ws(ws, "top", (geo.o, geo.lp, geo.n)).transpose(2, 0, 1)
    return _ws(ws, "top", (geo.o, geo.n, geo.lp)).transpose(1, 0, 2)


def conv_forward(x: Array, w: Array, b: Array | None, y: Array, *, stride: IntPair = 1,
                 pad: IntPair = 0, dilation: IntPair = 1, group: int = 1, ws: dict,
                 epilogue: ChannelEpilogue | None = None) -> None:
    """y = conv(x, w) + b, then ``epilogue`` (``netforge.ops.fused``: the BatchNorm, Scale
    and ReLU that follow, fused in by the graph) in the pass that writes y.

    Args:
        x: (N, C, H, W) input.
        w: (O, C/group, kh, kw) filters.
        b: (O,) bias or None.
        y: (N, O, OH, OW) output, assigned.
        ws: workspace from ``conv_workspace_shapes``.
    """
    xp = get_array_module(x)
    if is_cupy(xp):  # cuDNN when installed (netforge/ops/cuda/conv.py), else below
        from netforge.ops.cuda import conv as cuda_conv
        if cuda_conv.conv_forward(x, w, b, y, stride=pair(stride), pad=pair(pad),
                                  dilation=pair(dilation)):
            if epilogue is not None:
                y3 = view_as(y, (y.shape[0], y.shape[1], y.shape[2] * y.shape[3]))
                apply_epilogue(y3, y3, None, epilogue)
            return
    if "wino_v" in ws and compiled.active(x, w, b, y):  # 3x3 stride 1 (ops/winograd.py)
        winograd.conv_forward(x, w, b, y, pad=pad, ws=ws, epilogue=epilogue)
        return
    geo = _conv_geom(x.shape, w.shape, stride, pad, dilation, group)
    g, og, cg, lp = geo.g, geo.o // geo.g, geo.c // geo.g, geo.lp
    if geo.mode == "pointwise":
        xp.matmul(view_as(w, (g, og, cg)), view_as(x, (geo.n, g, cg, lp)),
                  out=view_as(y, (geo.n, g, og, lp)))
        if epilogue is not None:
            y3 = view_as(y, (geo.n, geo.o, lp))
            apply_epilogue(y3, y3, b, epilogue)
        elif b is not None:
            add_channel_bias(y, b)
        return
    w_g = view_as(w, (g, og, geo.k))
    for lo, hi, sub in _chunks(geo):
        _columns(x[lo:hi], sub, ws)
        xp.matmul(w_g, _ws(ws, "col", (g, geo.k, sub.m)), out=_ws(ws, "top", (g, og, sub.m)))
        # The transpose into (N, O, L) and the bias add share one pass over y.
        y3 = view_as(y[lo:hi], (sub.n, geo.o, lp))
        if epilogue is not None:
            apply_epilogue(_top_as_nol(sub, ws), y3, b, epilogue)
        elif b is None:
            xp.copyto(y3, _top_as_nol(sub, ws))
        else:
            xp.add(_top_as_nol(sub, ws), b[:, None], out=y3)


def add_channel_bias(y: Array, b: Array) -> None:
    """y (N, C, H, W) += b[c], in place."""
    xp = get_array_module(y)
    y3 = view_as(y, (y.shape[0], y.shape[1], y.shape[2] * y.shape[3]))
    xp.add(y3, b[:, None], out=y3)


def add_bias_gradient(dy3: Array, db: Array, stage: Array) -> None:
    """db (C,) += the sum of dy3 (N, C, L) over N and L, staged in ``stage`` (C,)."""
    xp = get_array_module(dy3)
    xp.sum(dy3, axis=(0, 2), out=stage)
    xp.add(db, stage, out=db)


def conv_backward(dy: Array, x: Array, w: Array, *, dx: Array | None, dw: Array | None,
                  db: Array | None, stride: IntPair = 1, pad: IntPair = 0,
                  dilation: IntPair = 1, group: int = 1, ws: dict,
                  reuse_col: bool = False) -> None:
    """Gradients of ``conv_forward``; any of dx/dw/db may be None to skip it.

    Args:
        dy: (N, O, OH, OW) top gradient.
        x: (N, C, H, W) forward input (read only when dw is wanted).
        w: (O, C/group, kh, kw) filters.
        dx: (N, C, H, W), assigned.
        dw: (O, C/group, kh, kw), accumulated.
        db: (O,), accumulated.
        ws: workspace from ``conv_workspace_shapes``.
        reuse_col: promise that ``ws["col"]`` still holds the columns that ``conv_forward``
            built from this same x, so that they are not rebuilt. True from that forward
            until a ``conv_backward`` with dx (which turns the buffer into the column
            gradient) or any other use of the workspace. Ignored for 1x1 convolutions and
            when the batch is processed in several chunks (large images).
    """
    xp = get_array_module(dy)
    if is_cupy(xp):  # cuDNN dgrad/wgrad when installed (netforge/ops/cuda/conv.py)
        from netforge.ops.cuda import conv as cuda_conv
        if cuda_conv.conv_backward(dy, x, w, dx=dx, dw=dw, db=db, stride=pair(stride),
                                   pad=pair(pad), dilation=pair(dilation)):
            return
    geo = _conv_geom(x.shape, w.shape, stride, pad, dilation, group)
    dy3 = view_as(dy, (geo.n, geo.o, geo.lp))
    if geo.mode == "pointwise":
        _pointwise_backward(xp, dy3, x, w, dx, dw, db, geo, ws)
        return
    if dw is None and dx is None:
        if db is not None:
            add_bias_gradient(dy3, db, ws["db"])
        return
    # Columns are left by an im2col forward only (not by Winograd's).
    reuse_col = reuse_col and geo.nb >= geo.n and "wino_v" not in ws
    for lo, hi, sub in _chunks(geo):
        _load_top(xp, dy3[lo:hi], db, sub, ws)
        if dw is not None:
            if not reuse_col:
                _columns(x[lo:hi], sub, ws)
            _weight_gradient(xp, dw, sub, ws)
        if dx is not None:
            _data_gradient(xp, w, dx[lo:hi], sub, ws)


def _load_top(xp, dy3: Array, db: Array | None, geo: _ConvGeom, ws: dict) -> None:
    """Copy dy into the (O, N*L) GEMM layout; the bias gradient comes along as a GEMV of
    it with a ones vector (Caffe's way; BLAS runs it ~3x faster than numpy's reduction over
    axes (0, 2), measured)."""
    xp.copyto(_top_as_nol(geo, ws), dy3)
    if db is not None:
        ones = _ws(ws, "ones", (geo.m,))
        ones.fill(1)
        xp.matmul(_ws(ws, "top", (geo.o, geo.m)), ones, out=ws["db"])
        xp.add(db, ws["db"], out=db)


def _weight_gradient(xp, dw: Array, geo: _ConvGeom, ws: dict) -> None:
    """dw += top (G, O/G, M) @ col (G, K, M)^T: one GEMM per group over all images at hand."""
    g, og = geo.g, geo.o // geo.g
    xp.matmul(_ws(ws, "top", (g, og, geo.m)),
              _ws(ws, "col", (g, geo.k, geo.m)).transpose(0, 2, 1),
              out=view_as(ws["dw"], (g, og, geo.k)))
    xp.add(dw, ws["dw"], out=dw)


def _data_gradient(xp, w: Array, dx: Array, geo: _ConvGeom, ws: dict) -> None:
    """dx = col2im(w^T @ top); the columns are free once dw is done and take the product."""
    g, og, c, kh, kw, n = geo.g, geo.o // geo.g, geo.c, geo.kh, geo.kw, geo.n
    w_t = view_as(w, (g, og, geo.k)).transpose(0, 2, 1)  # (G, K, O/G)
    xp.matmul(w_t, _ws(ws, "top", (g, og, geo.m)), out=_ws(ws, "col", (g, geo.k, geo.m)))
    if geo.mode == "chwn":
        xt = _ws(ws, "xt", (c, geo.h, geo.w, n))
        _fold(_ws(ws, "col", (c, kh, kw, 1, geo.oh, geo.ow, n)), xt[:, None], *geo.win)
        xp.copyto(dx, xt.transpose(3, 0, 1, 2))
    else:
        _fold(_ws(ws, "col", (c, kh, kw, n, geo.oh, geo.ow, 1)),
              dx.transpose(1, 0, 2, 3)[..., None], *geo.win)


def _pointwise_backward(xp, dy3: Array, x: Array, w: Array, dx: Array | None,
                        dw: Array | None, db: Array | None, geo: _ConvGeom, ws: dict) -> None:
    """1x1 stride-1 unpadded convolution: x itself is the column matrix."""
    n, g, og, cg, lp = geo.n, geo.g, geo.o // geo.g, geo.c // geo.g, geo.lp
    dy4 = dy3.reshape(n, g, og, lp)
    if db is not None:
        add_bias_gradient(dy3, db, ws["db"])
    if dx is not None:
        xp.matmul(view_as(w, (g, og, cg)).transpose(0, 2, 1), dy4,
                  out=view_as(dx, (n, g, cg, lp)))
    if dw is None:
        return
    if geo.batched_wgrad:
        # Sum over samples of dy[n] @ x[n]^T: per-sample GEMMs, then a reduction over N.
        dwb = view_as(ws["dw_batch"], (n, g, og, cg))
        xp.matmul(dy4, view_as(x, (n, g, cg, lp)).transpose(0, 1, 3, 2), out=dwb)
        xp.sum(dwb, axis=0, out=view_as(ws["dw"], (g, og, cg)))
        xp.add(dw, ws["dw"], out=dw)
        return
    for lo, hi, sub in _chunks(geo):  # small images: transposed copies, one GEMM per chunk
        _load_top(xp, dy3[lo:hi], None, sub, ws)
        _columns(x[lo:hi], sub, ws)
        _weight_gradient(xp, dw, sub, ws)


def image_columns(x: Array, w: Array, *, stride: IntPair = 1, pad: IntPair = 0,
                  dilation: IntPair = 1, group: int = 1, ws: dict) -> Array:
    """The (C*kh*kw, OH*OW) column matrix of ONE image x (1, C, H, W), ungrouped: with w
    viewed as (O, C*kh*kw), ``w @ columns`` is y (O, OH*OW) — the layout of y itself, so a
    caller may split that GEMM by output channels and write straight into y (the batch-1
    path of ``netforge.ops.engine``). A 1x1 stride-1 unpadded convolution returns x itself
    (viewed), else ws["col"] (from ``conv_workspace_shapes``) filled by im2col."""
    geo = _conv_geom(x.shape, w.shape, stride, pad, dilation, group)
    if geo.n != 1 or geo.g != 1:
        raise ValueError(f"image_columns: one image, one group (x {tuple(x.shape)}, "
                         f"group {group})")
    if geo.mode == "pointwise":
        return view_as(x, (geo.c, geo.lp))
    _columns(x, geo, ws)
    return _ws(ws, "col", (geo.k, geo.lp))

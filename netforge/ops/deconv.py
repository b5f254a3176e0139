"""Deconvolution (transposed convolution) kernels, built from the convolution kernels.

Shapes: x (N, C_in, H, W), w (C_in, C_out/group, kh, kw) as Caffe stores it, b (C_out,),
y (N, C_out, OH, OW) with OH = s(H - 1) + d(kh - 1) + 1 - 2p (``deconv_output_size``).

    deconv_output_size(size, kernel, pad, stride, dilation) -> int
    deconv_workspace_shapes(x_shape, w_shape, *, stride, pad, dilation, group, dtype) -> spec
    deconv_forward(x, w, b, y, *, stride, pad, dilation, group, ws)
    deconv_backward(dy, x, w, *, dx, dw, db, stride, pad, dilation, group, ws)

Deconvolution is the adjoint of the convolution that maps y's shape to x's shape with the
same weights, whose (O, C/group, kh, kw) layout is exactly Caffe's deconvolution weight layout
(O = C_in, C = C_out). So, as in Caffe, every pass is a convolution kernel:

- forward: y = conv's data gradient with x in the role of the top gradient (GEMM + col2im);
- data gradient: dx = conv forward of dy (im2col + GEMM);
- weight gradient: conv's weight gradient with dy as the input and x as the top gradient.

Groups, depthwise, 1x1 and chunking all come from the convolution kernels unchanged. As
there, y and dx are assigned, dw and db accumulated.
"""

from __future__ import annotations

import numpy

from netforge.ops.vision import (
    IntPair,
    add_bias_gradient,
    add_channel_bias,
    conv_backward,
    conv_forward,
    conv_workspace_shapes,
)
from netforge.ops.xp import Array, WorkspaceSpec, pair, view_as


def deconv_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int = 1) -> int:
    """Caffe's deconvolution output size: s(size - 1) + d(k - 1) + 1 - 2p."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def deconv_output_shape(x_shape: tuple[int, ...], w_shape: tuple[int, ...], *,
                        stride: IntPair = 1, pad: IntPair = 0, dilation: IntPair = 1,
                        group: int = 1) -> tuple[int, int, int, int]:
    """(N, C_out, OH, OW) for x (N, C_in, H, W) and w (C_in, C_out/group, kh, kw)."""
    n, _, h, w = x_shape
    _, cog, kh, kw = w_shape
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(pad), pair(dilation)
    return (n, cog * group, deconv_output_size(h, kh, ph, sh, dh),
            deconv_output_size(w, kw, pw, sw, dw))


def deconv_workspace_shapes(x_shape: tuple[int, ...], w_shape: tuple[int, ...], *,
                            stride: IntPair = 1, pad: IntPair = 0, dilation: IntPair = 1,
                            group: int = 1,
                            dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """Scratch for ``deconv_forward``/``deconv_backward``: the workspace of the convolution
    from y's shape to x's shape, plus ``deconv_db`` (C_out,) staging the bias gradient."""
    geo = {"stride": stride, "pad": pad, "dilation": dilation, "group": group}
    y_shape = deconv_output_shape(x_shape, w_shape, **geo)
    spec = conv_workspace_shapes(y_shape, w_shape, dtype=dtype, **geo)
    spec["deconv_db"] = ((y_shape[1],), numpy.dtype(dtype))
    return spec


def deconv_forward(x: Array, w: Array, b: Array | None, y: Array, *, stride: IntPair = 1,
                   pad: IntPair = 0, dilation: IntPair = 1, group: int = 1, ws: dict) -> None:
    """y = conv^T(x, w) + b.

    Args:
        x: (N, C_in, H, W) input.
        w: (C_in, C_out/group, kh, kw) filters.
        b: (C_out,) bias or None.
        y: (N, C_out, OH, OW) output, assigned.
        ws: workspace from ``deconv_workspace_shapes``.
    """
    # The convolution's data gradient reads only the shape of its input argument (it never
    # needs the input's values without a weight gradient), so y stands in for it.
    conv_backward(x, y, w, dx=y, dw=None, db=None, stride=stride, pad=pad, dilation=dilation,
                  group=group, ws=ws)
    if b is not None:
        add_channel_bias(y, b)


def deconv_backward(dy: Array, x: Array, w: Array, *, dx: Array | None, dw: Array | None,
                    db: Array | None, stride: IntPair = 1, pad: IntPair = 0,
                    dilation: IntPair = 1, group: int = 1, ws: dict) -> None:
    """Gradients of ``deconv_forward``; any of dx/dw/db may be None to skip it.

    Args:
        dy: (N, C_out, OH, OW) top gradient.
        x: (N, C_in, H, W) forward input (read only when dw is wanted).
        w: (C_in, C_out/group, kh, kw) filters.
        dx: (N, C_in, H, W), assigned.
        dw: (C_in, C_out/group, kh, kw), accumulated.
        db: (C_out,), accumulated.
        ws: workspace from ``deconv_workspace_shapes``.
    """
    geo = {"stride": stride, "pad": pad, "dilation": dilation, "group": group}
    if db is not None:
        dy3 = view_as(dy, (dy.shape[0], dy.shape[1], dy.shape[2] * dy.shape[3]))
        add_bias_gradient(dy3, db, ws["deconv_db"])
    if dx is not None:
        conv_forward(dy, w, None, dx, ws=ws, **geo)
    if dw is not None:
        # The forward just above left im2col(dy) in the workspace: the weight gradient's
        # columns are the same, so they are reused when that pass ran.
        conv_backward(x, dy, w, dx=None, dw=dw, db=None, ws=ws, reuse_col=dx is not None,
                      **geo)

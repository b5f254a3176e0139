"""Winograd F(2x2, 3x3) convolution forward for 3x3, stride-1, dilation-1, ungrouped layers
(any padding): the tile transforms compiled (``netforge.ops.compiled.winograd``), the channel
contraction as 16 GEMMs, one per position of the 4x4 transformed tile:

    U = G g G^T (16, O, C)    V = B^T d B (16, C, T)    M[xi] = U[xi] @ V[xi]    y = A^T M A

T: the 2x2 output tiles of the images at hand. 16 products of 2x2 outputs per tile instead of
36 multiplications: 2.25x fewer in the GEMMs, which is where a 3x3 layer spends its time.
Images are taken in chunks whose V holds at most ``_TILE_BUDGET`` elements (cache-sized, as
im2col's columns in ``netforge.ops.vision``).

The 16 planes of U, V and M are padded apart (``_plane``): planes a multiple of 4 KiB apart
map the 16 streams a transform reads or writes onto the same cache sets, which measured 5-10x
slower transforms (e.g. 36 -> 7.5 ns per input tile of a 64-channel 56x56 layer).

Where it runs (``applies``, decided at reshape): only with the compiled transforms (numba,
numpy arrays), not with NETFORGE_NO_WINOGRAD=1, and only for shapes measured faster than
im2col + GEMM on the 2-core machine (``_worth_it``); backward
stays im2col + GEMM (``netforge.ops.vision``), which then rebuilds its columns. Accuracy:
the transforms add and halve, so float32 results differ from direct convolution by a few
ulps of the largest partial sums (tests/ops/test_winograd.py checks against direct
convolution in float64).

    applies(x_shape, w_shape, *, stride, pad, dilation, group) -> bool
    workspace_shapes(x_shape, w_shape, *, pad, dtype) -> spec      wino_u, wino_v, wino_m
    conv_forward(x, w, b, y, *, pad, ws, epilogue=None)
"""

from __future__ import annotations

import os

import numpy

from netforge.ops import compiled
from netforge.ops.fused import ChannelEpilogue, apply_epilogue
from netforge.ops.xp import Array, WorkspaceSpec, pair, view_as

# Elements of V per chunk of images (8 MB in float32), as vision's _COL_BUDGET.
_TILE_BUDGET = 1 << 21


def _tiles(h: int, w: int, pad: tuple[int, int]) -> tuple[int, int, int, int]:
    """(OH, OW, tile rows, tile columns) of a 3x3 stride-1 window over h x w."""
    oh, ow = h + 2 * pad[0] - 2, w + 2 * pad[1] - 2
    return oh, ow, (oh + 1) // 2, (ow + 1) // 2


def _worth_it(n: int, c: int, o: int, tiles: int) -> bool:
    """The measured rule (forward of one batch slice, 1 BLAS thread, interleaved A/B on the
    loaded 2-core machine; see the fusion report of issue 14): Winograd took 0.16-0.75x
    im2col + GEMM's time from 16 to 512 channels and 32 to 6272 tiles per call, but 1.46x
    with 16 tiles (512 channels at 7x7, one image: U, 16/9 the size of w, is read for too
    few columns) and 2.3x with 3 input channels (the transforms outweigh tiny GEMMs)."""
    return n * tiles >= _MIN_TILES and min(c, o) >= _MIN_CHANNELS


_MIN_TILES = 32
_MIN_CHANNELS = 16


def applies(x_shape: tuple[int, ...], w_shape: tuple[int, ...], *, stride, pad, dilation,
            group: int) -> bool:
    """Whether ``conv_forward`` of these shapes takes the Winograd path."""
    if not compiled.enabled() or len(x_shape) != 4 or os.environ.get(
            "NETFORGE_NO_WINOGRAD", "") == "1":
        return False
    if tuple(w_shape[2:]) != (3, 3) or pair(stride) != (1, 1) or pair(dilation) != (1, 1):
        return False
    if group != 1:
        return False
    n, c, h, w = x_shape
    oh, ow, th, tw = _tiles(h, w, pair(pad))
    if oh < 1 or ow < 1:
        return False
    return _worth_it(n, c, w_shape[0], th * tw)


def _plane(size: int) -> int:
    """A plane's length: whole 64-byte lines, and never a multiple of 4 KiB (see above)."""
    stride = -(-size // 16) * 16
    return stride + 16 if stride % 1024 == 0 else stride


def _images_per_chunk(n: int, c: int, tiles: int) -> int:
    return max(1, min(n, _TILE_BUDGET // (16 * c * tiles)))


def workspace_shapes(x_shape: tuple[int, ...], w_shape: tuple[int, ...], *, pad,
                     dtype=numpy.float32) -> WorkspaceSpec:
    n, c, h, w = x_shape
    o = w_shape[0]
    _, _, th, tw = _tiles(h, w, pair(pad))
    t = _images_per_chunk(n, c, th * tw) * th * tw
    dt = numpy.dtype(dtype)
    return {"wino_u": ((16, _plane(o * c)), dt), "wino_v": ((16, _plane(c * t)), dt),
            "wino_m": ((16, _plane(o * t)), dt)}


def _planes(buffer: Array, shape: tuple[int, int]) -> Array:
    """The (16, *shape) view of a padded-plane buffer."""
    return buffer[:, :shape[0] * shape[1]].reshape(16, *shape)


def conv_forward(x: Array, w: Array, b: Array | None, y: Array, *, pad, ws: dict,
                 epilogue: ChannelEpilogue | None = None) -> None:
    """y = conv(x, w) + b (3x3, stride 1), then ``epilogue`` (``netforge.ops.fused``)."""
    kernels = compiled.load("winograd")
    n, c, h, width = x.shape
    o = w.shape[0]
    ph, pw = pair(pad)
    oh, ow, th, tw = _tiles(h, width, (ph, pw))
    u = _planes(ws["wino_u"], (o, c))
    kernels.filter_transform(w, u)
    nb = _images_per_chunk(n, c, th * tw)
    bias = b if b is not None else u[0, 0, :0]  # an empty vector stands for no bias
    for lo in range(0, n, nb):
        hi = min(n, lo + nb)
        t = (hi - lo) * th * tw
        v = _planes(ws["wino_v"], (c, t))
        m = _planes(ws["wino_m"], (o, t))
        kernels.input_transform(x[lo:hi], v, ph, pw, th, tw)
        numpy.matmul(u, v, out=m)
        kernels.output_transform(m, y[lo:hi], bias, b is not None, th, tw)
        if epilogue is not None:
            y3 = view_as(y[lo:hi], (hi - lo, o, oh * ow))
            apply_epilogue(y3, y3, None, epilogue)

"""Spatial pyramid pooling (Caffe's SPP layer), built from the pooling kernels.

    spp_levels(height, width, pyramid_height) -> [SppLevel]
    spp_output_shape(x_shape, levels) -> shape
    spp_workspace_shapes(x_shape, levels, method, *, dtype, index_dtype) -> [spec per level]
    spp_forward(x, y, *, levels, method, ws, rng=None, train=True)
    spp_backward(dy, x, dx, *, levels, method, ws, train=True)

Level l pools x (N, C, H, W) into 2^l x 2^l bins with Caffe's geometry (``spp_levels``):
kernel = ceil(H / 2^l), stride = kernel, pad = (kernel * 2^l - H + 1) // 2, ceil-mode output
size (so a level may end up with fewer bins than 2^l, exactly as in Caffe). Each level's
(N, C, bh, bw) output is flattened per image in (c, h, w) order and the levels are
concatenated along axis 1, level 0 first: y (N, sum_l C * bh_l * bw_l). With a pyramid of
height 1 Caffe skips the flatten and y is the (N, C, 1, 1) pooling output itself.

``method`` is "MAX", "AVE" or "STOCHASTIC"; STOCHASTIC takes no padding, so it needs sizes
that divide into every level's bins. ``ws`` is a list with one workspace dict per level.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy

from netforge.ops import pooling
from netforge.ops import stochastic_pooling as stochastic
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, view_as

METHODS = ("MAX", "AVE", "STOCHASTIC")


class SppLevel(NamedTuple):
    bins: int  # 2^level, the bins per side the level aims for
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    out: tuple[int, int]  # (bh, bw): the pooling output size Caffe gets for this geometry


def _level_axis(size: int, bins: int) -> tuple[int, int]:
    """(kernel, pad) along one axis: the smallest kernel covering ``size`` in ``bins``
    windows, the remainder padded as evenly as possible (the extra pixel at the end)."""
    kernel = -(-size // bins)
    remainder = kernel * bins - size
    return kernel, (remainder + 1) // 2


def spp_levels(height: int, width: int, pyramid_height: int) -> list[SppLevel]:
    """Caffe's per-level pooling geometry for an H x W input.

    Raises ValueError when a level's pad reaches its kernel (Caffe's pooling refuses that:
    the input is too small, or of an awkward size, for 2^level bins).
    """
    levels = []
    for level in range(pyramid_height):
        bins = 2 ** level
        (kh, ph), (kw, pw) = _level_axis(height, bins), _level_axis(width, bins)
        if ph >= kh or pw >= kw:
            raise ValueError(
                f"a {height}x{width} input does not split into {bins}x{bins} bins at pyramid "
                f"level {level} (kernel {(kh, kw)}, pad {(ph, pw)}; pad must be < kernel)")
        out = (pooling.pool_output_size(height, kh, ph, kh),
               pooling.pool_output_size(width, kw, pw, kw))
        levels.append(SppLevel(bins, (kh, kw), (kh, kw), (ph, pw), out))
    return levels


def spp_output_shape(x_shape: tuple[int, ...], levels: list[SppLevel]) -> tuple[int, ...]:
    n, c = x_shape[0], x_shape[1]
    if len(levels) == 1:
        return (n, c, *levels[0].out)
    return (n, sum(c * lv.out[0] * lv.out[1] for lv in levels))


def spp_workspace_shapes(x_shape: tuple[int, ...], levels: list[SppLevel], method: str, *,
                         dtype: numpy.dtype = numpy.float32,
                         index_dtype: numpy.dtype = numpy.intp) -> list[WorkspaceSpec]:
    """One spec per level: the level's pooling workspace, its contiguous output ``y`` and
    top gradient ``dy`` (N, C, bh, bw), ``sample`` (the argmax or sampled index) for MAX and
    STOCHASTIC;
    level 0 also holds ``dx_part`` (x's shape), in which backward gets each further level's
    gradient before adding it up."""
    if method not in METHODS:
        raise ValueError(f"SPP pooling method must be one of {METHODS}, got {method!r}")
    dt = numpy.dtype(dtype)
    specs = []
    for lv in levels:
        y_shape = (x_shape[0], x_shape[1], *lv.out)
        if method == "MAX":
            spec = pooling.max_pool_workspace_shapes(x_shape, y_shape, kernel=lv.kernel,
                                                     stride=lv.stride, pad=lv.pad,
                                                     index_dtype=index_dtype, dtype=dt)
        elif method == "AVE":
            spec = pooling.ave_pool_workspace_shapes(x_shape, y_shape, kernel=lv.kernel,
                                                     stride=lv.stride, pad=lv.pad, dtype=dt)
        else:
            if lv.pad != (0, 0):
                raise ValueError(f"STOCHASTIC pooling takes no padding, but a {x_shape[2]}x"
                                 f"{x_shape[3]} input needs pad {lv.pad} for {lv.bins}x"
                                 f"{lv.bins} bins")
            spec = stochastic.stochastic_pool_workspace_shapes(x_shape, y_shape, kernel=lv.kernel,
                                                               stride=lv.stride, dtype=dt,
                                                               index_dtype=index_dtype)
        spec["y"] = (y_shape, dt)
        spec["dy"] = (y_shape, dt)
        if method != "AVE":
            spec["sample"] = (y_shape, numpy.dtype(index_dtype))
        specs.append(spec)
    if len(levels) > 1:
        specs[0]["dx_part"] = (tuple(x_shape), dt)
    return specs


def _flat_slices(y: Array, x_shape: tuple[int, ...], levels: list[SppLevel]):
    """(level, its (N, C*bh*bw) slice of y viewed as (N, k)) in concatenation order."""
    n, c = x_shape[0], x_shape[1]
    y2 = view_as(y, (n, y.size // n))
    start = 0
    for i, lv in enumerate(levels):
        width = c * lv.out[0] * lv.out[1]
        yield i, y2[:, start:start + width]
        start += width


def spp_forward(x: Array, y: Array, *, levels: list[SppLevel], method: str, ws: list[dict],
                rng=None, train: bool = True) -> None:
    """y (see the module docstring), assigned. ``rng`` (a RandomStream or a numpy
    Generator) and ``train`` matter only for STOCHASTIC: TRAIN samples, TEST takes the
    weighted average."""
    xp = get_array_module(x)
    n = x.shape[0]
    for i, part in _flat_slices(y, x.shape, levels):
        lv, w = levels[i], ws[i]
        geo = {"kernel": lv.kernel, "stride": lv.stride}
        level_y = w["y"]
        if method == "MAX":
            pooling.max_pool_forward(x, level_y, w["sample"], pad=lv.pad, ws=w, **geo)
        elif method == "AVE":
            pooling.ave_pool_forward(x, level_y, pad=lv.pad, ws=w, **geo)
        elif train:
            stochastic.stochastic_pool_forward_train(x, level_y, w["sample"], rng=rng, ws=w, **geo)
        else:
            stochastic.stochastic_pool_forward_test(x, level_y, ws=w, **geo)
        xp.copyto(part, view_as(level_y, (n, part.shape[1])))


def spp_backward(dy: Array, x: Array, dx: Array, *, levels: list[SppLevel], method: str,
                 ws: list[dict], train: bool = True) -> None:
    """dx (N, C, H, W), assigned: the sum over levels of each level's pooling gradient.

    Needs the MAX/STOCHASTIC indices that ``spp_forward`` left in the workspaces."""
    xp = get_array_module(dy)
    n = x.shape[0]
    for i, part in _flat_slices(dy, x.shape, levels):
        lv, w = levels[i], ws[i]
        geo = {"kernel": lv.kernel, "stride": lv.stride}
        level_dy = w["dy"]
        xp.copyto(view_as(level_dy, (n, part.shape[1])), part)
        target = dx if i == 0 else ws[0]["dx_part"]
        if method == "MAX":
            pooling.max_pool_backward(level_dy, w["sample"], target, pad=lv.pad, ws=w, **geo)
        elif method == "AVE":
            pooling.ave_pool_backward(level_dy, target, pad=lv.pad, ws=w, **geo)
        elif train:
            stochastic.stochastic_pool_backward_train(level_dy, w["sample"], target, ws=w, **geo)
        else:
            stochastic.stochastic_pool_backward_test(level_dy, x, target, ws=w, **geo)
        if i > 0:
            xp.add(dx, target, out=dx)

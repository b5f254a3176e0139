"""Per-channel epilogues: the elementwise layers that follow a GEMM (or a BatchNorm),
applied in the same pass that writes the output (``netforge.graph.fusion`` builds them).

One epilogue is, per channel c of an (N, C, S) array, in this order (each stage optional):

    v = src + bias[c]                 the convolution's / inner product's own bias
    v = (v - mean[c]) * inv_std[c]    BatchNorm with stored statistics
    v = v * scale[c]                  Scale
    v = v + shift[c]                  Scale's bias term
    y = v if v > 0 else slope * v     ReLU (negative_slope; 0 gives max(v, 0))

Each stage rounds exactly as the layer it replaces does (one float operation per stage, in
the layer's order; no fused multiply-add), so a fused net's outputs equal the unfused net's
bit for bit. ``src`` may be a strided view (a convolution's GEMM product seen as (N, O, L))
and may be ``y`` itself.

    ChannelEpilogue(mean, inv_std, scale, shift, slope)
    apply_epilogue(src, y, bias, epilogue)        src, y (N, C, S); bias (C,) or None
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from netforge.ops import compiled
from netforge.ops.xp import Array, get_array_module


@dataclass(frozen=True)
class ChannelEpilogue:
    """The stages after the bias; ``None`` leaves a stage out (``slope`` None: no ReLU)."""

    mean: Array | None = None
    inv_std: Array | None = None
    scale: Array | None = None
    shift: Array | None = None
    slope: float | None = None

    def with_changes(self, **changes) -> ChannelEpilogue:
        values = {name: getattr(self, name) for name in
                  ("mean", "inv_std", "scale", "shift", "slope")}
        values.update(changes)
        return ChannelEpilogue(**values)


def _column(v: Array) -> Array:
    return v.reshape(-1, 1)


def apply_epilogue(src: Array, y: Array, bias: Array | None,
                   epilogue: ChannelEpilogue | None) -> None:
    """y = epilogue(src + bias) per channel; src and y (N, C, S), y assigned (may be src)."""
    ep = epilogue or ChannelEpilogue()
    vectors = (bias, ep.mean, ep.inv_std, ep.scale, ep.shift)
    if (compiled.active(y, *vectors) and type(src) is numpy.ndarray
            and src.dtype == y.dtype):
        compiled.load("fused").channel_epilogue(src, y, bias, ep.mean, ep.inv_std, ep.scale,
                                                ep.shift, ep.slope)
        return
    xp = get_array_module(y)
    if bias is not None:
        xp.add(src, _column(bias), out=y)
    elif src is not y:
        xp.copyto(y, src)
    if ep.mean is not None:
        xp.subtract(y, _column(ep.mean), out=y)
        xp.multiply(y, _column(ep.inv_std), out=y)
    if ep.scale is not None:
        xp.multiply(y, _column(ep.scale), out=y)
    if ep.shift is not None:
        xp.add(y, _column(ep.shift), out=y)
    if ep.slope is not None:
        if ep.slope == 0:
            xp.maximum(y, 0, out=y)
        else:  # the in-place ReLU's rule: v where v > 0, else slope * v (NaN stays NaN)
            xp.copyto(y, y * ep.slope, where=y <= 0)

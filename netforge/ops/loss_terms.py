"""Pieces every loss kernel shares: Caffe's normalizers, the loss-weight gradient scale,
finishing a loss on the device or the host, integer label rows and their range check, and a
label-indexed gather without temporaries (see ``netforge.ops.loss`` for the conventions)."""

from __future__ import annotations

import numpy

from netforge.backend import range_checks
from netforge.ops.xp import Array, get_array_module, scratch, view_as

# Caffe clamps the picked probability at FLT_MIN before the log, for every Dtype.
FLT_MIN = float(numpy.finfo(numpy.float32).tiny)
NORMALIZATIONS = ("FULL", "VALID", "BATCH_SIZE", "NONE")


def normalizer(mode: str, outer: int, inner: int, valid) -> float | Array:
    """The divisor, at least 1: a float, or a 0-d device array when ``valid`` (the count of
    non-ignored labels) is one."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
    value = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    if isinstance(value, (int, numpy.integer)):
        return float(max(int(value), 1))
    return get_array_module(value).maximum(value, 1)


def gradient_scale(xp, loss_weight, normalizer, dtype) -> float | Array:
    """loss_weight / normalizer in float64, rounded to ``dtype`` once, as a Python float
    operand would be: a float when both are host numbers, else a 0-d device array."""
    if isinstance(loss_weight, (int, float)) and isinstance(normalizer, (int, float)):
        return float(loss_weight) / normalizer
    value = xp.asarray(loss_weight, dtype=xp.float64) / normalizer
    return xp.asarray(value, dtype=dtype)


def finish_loss(xp, total, normalizer, out: Array | None, negate: bool = False) -> float | Array:
    """The loss ``±total / normalizer`` (float64 arithmetic): assigned to ``out`` on the
    device and returned when ``out`` is given, else read back as a Python float."""
    if out is None:
        value = float(total) / float(normalizer)
        return -value if negate else value
    value = xp.asarray(total, dtype=xp.float64) / normalizer
    out[...] = -value if negate else value
    return out


def label_rows(xp, label: Array, outer: int, c: int, inner: int, ignore_label: int | None,
            ws: dict | None) -> tuple[Array, Array | None, int]:
    """Integer labels (outer, inner), ignored ones set to class 0 (a harmless in-range index
    whose terms are masked out later); the valid mask (None when nothing is ignored); the
    valid count. Masks are applied by multiplication: numpy's ``where=`` forms are slow."""
    lab = scratch(ws, "label", (outer, inner), numpy.intp, xp)
    xp.copyto(lab, view_as(label, (outer, inner)), casting="unsafe")
    valid = None
    count = outer * inner
    if ignore_label is not None:
        valid = scratch(ws, "valid", (outer, inner), bool, xp)
        xp.not_equal(lab, int(ignore_label), out=valid)
        xp.multiply(lab, valid, out=lab)
        count = xp.count_nonzero(valid)  # an int for numpy, a 0-d array on a device
    if lab.size and range_checks(xp):  # reads the labels back: see the module docstring
        check_label_range(int(lab.min()), int(lab.max()), c, ignore_label)
    return lab, valid, count


def check_label_range(low: int, high: int, c: int, ignore_label: int | None) -> None:
    if low < 0 or high >= c:
        bad = low if low < 0 else high
        raise ValueError(f"label {bad} is outside [0, {c}) and is not the ignore_label "
                         f"({ignore_label})")


def flat_label_index(xp, lab: Array, outer: int, c: int, inner: int, ws: dict | None) -> Array:
    """Flat index into an (outer, C, inner) array of each position's label entry:
    o*C*inner + lab*inner + i."""
    idx = scratch(ws, "index", (outer, inner), numpy.intp, xp)
    if idx.size == 0:
        return idx
    # o*C*inner + i as a running sum of steps (1 along a row, the row jump at each row
    # start): no arange of the batch size, no broadcast operands to buffer.
    idx.fill(1)
    idx[:, 0] = (c - 1) * inner + 1
    flat = view_as(idx, (idx.size,))
    flat[0] = 0
    xp.cumsum(flat, out=flat)
    if inner == 1:
        xp.add(idx, lab, out=idx)
    else:  # scale the labels in place and back (exact in integers) rather than via a copy
        xp.multiply(lab, inner, out=lab)
        xp.add(idx, lab, out=idx)
        xp.floor_divide(lab, inner, out=lab)
    return idx


def gather_into(xp, flat: Array, idx: Array, out: Array, axis: int | None = None) -> None:
    """out = flat[idx] (along ``axis``) without a temporary (idx is known to be in range)."""
    if xp is numpy:
        xp.take(flat, idx, axis=axis, out=out, mode="clip")  # "raise" would buffer the output
    else:  # CuPy's take has no mode
        xp.take(flat, idx, axis=axis, out=out)

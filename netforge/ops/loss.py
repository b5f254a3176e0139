"""Loss and metric kernels: softmax cross-entropy (Caffe's SoftmaxWithLoss) and accuracy.

    loss_workspace_shapes(x_shape, axis=1, dtype=float32) -> spec
    softmax_loss_forward(x, label, prob, *, axis, ignore_label, normalization, ws) -> float
    softmax_loss_backward(prob, label, dx, *, axis, ignore_label, normalization,
                          loss_weight, ws)
    accuracy(x, label, *, top_k, axis, ignore_label, per_class=True, ws)
        -> (accuracy, per_class_accuracy or None)

Scores x are (outer, C, inner) around ``axis`` (e.g. (N, C) or (N, C, H, W) with axis 1);
``label`` holds outer * inner integer-valued numbers (any shape with that many elements,
e.g. (N,), (N, 1, 1, 1) or (N, H, W)); a label is truncated to int as Caffe's static_cast
does. ``ignore_label`` None means no label is ignored. A label outside [0, C) that is not
ignored raises ValueError (Caffe only checks it in debug builds).

Normalization (Caffe's LossParameter): "FULL" divides by outer * inner, "VALID" by the
number of non-ignored labels, "BATCH_SIZE" by outer, "NONE" by 1; the divisor is clamped to
at least 1. ``ws`` follows ``netforge.ops._xp`` (label-sized index arrays, plus the
(outer, C, inner) bool ``ge`` for accuracy); without it scratch is allocated per call.
"""

from __future__ import annotations

import numpy

from netforge.ops._xp import Array, WorkspaceSpec, get_array_module, scratch, view_as
from netforge.ops.common import _around, softmax_forward

# Caffe clamps the picked probability at FLT_MIN before the log, for every Dtype.
_FLT_MIN = float(numpy.finfo(numpy.float32).tiny)
_MODES = ("FULL", "VALID", "BATCH_SIZE", "NONE")


def loss_workspace_shapes(x_shape: tuple[int, ...], axis: int = 1,
                          dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """Scratch for the loss and accuracy kernels on scores of shape ``x_shape``."""
    outer, c, inner = _around(x_shape, axis)
    dt, ip = numpy.dtype(dtype), numpy.dtype(numpy.intp)
    return {"scale": ((outer, 1, inner), dt), "label": ((outer, inner), ip),
            "index": ((outer, inner), ip), "picked": ((outer, inner), dt),
            "valid": ((outer, inner), numpy.dtype(bool)),
            "ge": ((outer, c, inner), numpy.dtype(bool))}


def _normalizer(mode: str, outer: int, inner: int, valid: int) -> float:
    if mode not in _MODES:
        raise ValueError(f"normalization must be one of {', '.join(_MODES)}, got {mode!r}")
    value = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return float(max(value, 1))


def _labels(xp, label: Array, outer: int, c: int, inner: int, ignore_label: int | None,
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
        count = int(xp.count_nonzero(valid))
    if lab.size and (int(lab.min()) < 0 or int(lab.max()) >= c):
        bad = int(lab.min()) if int(lab.min()) < 0 else int(lab.max())
        raise ValueError(f"label {bad} is outside [0, {c}) and is not the ignore_label "
                         f"({ignore_label})")
    return lab, valid, count


def _flat_index(xp, lab: Array, outer: int, c: int, inner: int, ws: dict | None) -> Array:
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


def _gather(xp, flat: Array, idx: Array, out: Array) -> None:
    """out = flat[idx] without a temporary (idx is known to be in range)."""
    if xp is numpy:
        xp.take(flat, idx, out=out, mode="clip")  # "raise" would buffer the output
    else:  # CuPy's take has no mode
        xp.take(flat, idx, out=out)


def softmax_loss_forward(x: Array, label: Array, prob: Array, *, axis: int = 1,
                         ignore_label: int | None = None, normalization: str = "VALID",
                         ws: dict | None = None) -> float:
    """loss = -sum over non-ignored positions of log(max(prob[label], FLT_MIN)) / normalizer.

    Args:
        x: scores (outer, C, inner) around ``axis``.
        label: outer * inner integer-valued labels.
        prob: x's shape, assigned softmax(x) along ``axis`` (kept for backward).
    Returns:
        The loss as a Python float.
    """
    xp = get_array_module(x)
    softmax_forward(x, prob, axis=axis, ws=ws)
    outer, c, inner = _around(x.shape, axis)
    lab, valid, count = _labels(xp, label, outer, c, inner, ignore_label, ws)
    idx = _flat_index(xp, lab, outer, c, inner, ws)
    picked = scratch(ws, "picked", (outer, inner), prob.dtype, xp)
    _gather(xp, view_as(prob, (prob.size,)), idx, picked)
    xp.maximum(picked, _FLT_MIN, out=picked)
    xp.log(picked, out=picked)
    if valid is not None:
        xp.multiply(picked, valid, out=picked)
    return -float(picked.sum()) / _normalizer(normalization, outer, inner, count)


def softmax_loss_backward(prob: Array, label: Array, dx: Array, *, axis: int = 1,
                          ignore_label: int | None = None, normalization: str = "VALID",
                          loss_weight: float = 1.0, ws: dict | None = None) -> None:
    """dx = (prob - onehot(label)) * loss_weight / normalizer, zero at ignored positions.

    Args:
        prob: the softmax from ``softmax_loss_forward``; dx: its shape, assigned.
        loss_weight: the top's diff (the layer's loss weight), as Caffe seeds it.
    """
    xp = get_array_module(prob)
    outer, c, inner = _around(prob.shape, axis)
    lab, valid, count = _labels(xp, label, outer, c, inner, ignore_label, ws)
    idx = _flat_index(xp, lab, outer, c, inner, ws)
    scale = float(loss_weight) / _normalizer(normalization, outer, inner, count)
    xp.multiply(prob, scale, out=dx)
    # Subtract the scaled one-hot at one entry per position: take, adjust, put back.
    flat = view_as(dx, (dx.size,))
    picked = scratch(ws, "picked", (outer, inner), dx.dtype, xp)
    _gather(xp, flat, idx, picked)
    xp.subtract(picked, scale, out=picked)
    if xp is numpy:
        xp.put(flat, idx, picked, mode="clip")  # "raise" would buffer; idx is in range
    else:
        flat[idx] = picked
    if valid is not None:
        dx3 = view_as(dx, (outer, c, inner))
        xp.multiply(dx3, valid[:, None, :], out=dx3)


def accuracy(x: Array, label: Array, *, top_k: int = 1, axis: int = 1,
             ignore_label: int | None = None, per_class: bool = True,
             ws: dict | None = None) -> tuple[float, Array | None]:
    """Top-k accuracy with Caffe's tie rule, and per-class accuracy.

    A position counts as correct when fewer than ``top_k`` *other* classes score greater
    than or equal to the label's score, i.e. ties are counted against the label (Caffe's
    ``num_better_predictions`` loop since 2016; the older partial-sort version broke ties by
    class index). Ignored positions are skipped; with none left the accuracy is 0.

    Returns:
        (accuracy, per_class) where per_class (C,) holds hits / count per label class (0 for
        a class absent from the labels), or None when ``per_class`` is False.
    """
    xp = get_array_module(x)
    outer, c, inner = _around(x.shape, axis)
    lab, valid, count = _labels(xp, label, outer, c, inner, ignore_label, ws)
    idx = _flat_index(xp, lab, outer, c, inner, ws)
    score = scratch(ws, "picked", (outer, inner), x.dtype, xp)
    _gather(xp, view_as(x, (x.size,)), idx, score)
    ge = scratch(ws, "ge", (outer, c, inner), bool, xp)
    xp.greater_equal(view_as(x, (outer, c, inner)), score[:, None, :], out=ge)
    at_least = idx  # the flat index is no longer needed: reuse it for the >= counts
    xp.sum(ge, axis=1, out=at_least)
    correct = ge[:, 0, :]  # likewise the first channel of ge becomes the verdict
    xp.less_equal(at_least, top_k, out=correct)  # the label itself is among the counted
    if valid is not None:
        xp.logical_and(correct, valid, out=correct)
    hits = int(xp.count_nonzero(correct))
    acc = hits / count if count else 0.0
    if not per_class:
        return acc, None
    # Per-class figures are a small metric: bincount on label-sized vectors is fine here.
    nums = xp.bincount(lab.ravel() if valid is None else lab[valid], minlength=c)
    wins = xp.bincount(lab[correct], minlength=c)
    per = xp.zeros(c, dtype=x.dtype)
    xp.divide(wins, nums, out=per, where=nums > 0, casting="unsafe")
    return acc, per

"""Loss and metric kernels on class scores: softmax cross-entropy (Caffe's SoftmaxWithLoss),
accuracy, sigmoid cross-entropy, multinomial logistic and infogain. The losses on distances
and margins (Euclidean, hinge, contrastive) are in ``netforge.ops.distance_losses``; the
pieces all of them share in ``netforge.ops.loss_terms``.

    loss_workspace_shapes(x_shape, axis=1, dtype=float32) -> spec
    softmax_loss_forward(x, label, prob, *, axis, ignore_label, normalization, ws) -> float
    softmax_loss_backward(prob, label, dx, *, axis, ignore_label, normalization,
                          loss_weight, ws)
    accuracy(x, label, *, top_k, axis, ignore_label, per_class=True, ws)
        -> (accuracy, per_class_accuracy or None)
    sigmoid_cross_entropy_workspace_shapes(x_shape, dtype) -> spec
    sigmoid_cross_entropy_forward(x, target, *, ignore_label, normalization, ws) -> float
    sigmoid_cross_entropy_backward(x, target, dx, *, ignore_label, normalization,
                                   loss_weight, ws)
    multinomial_logistic_forward(prob, label, *, ws) -> float
    multinomial_logistic_backward(prob, label, dx, *, loss_weight, ws)
    infogain_workspace_shapes(x_shape, axis, dtype) -> spec
    infogain_forward(x, label, h, prob, *, axis, ignore_label, normalization, ws) -> float
    infogain_backward(prob, label, h, dx, *, axis, ignore_label, normalization,
                      loss_weight, ws)

The backward kernels take ``loss_weight``, the top's diff that the net seeds (Caffe scales
every loss gradient by it): a number, or the 0-d array of that diff, which is then never
read back to the host. They assign the bottom gradients.

Every forward kernel takes ``out``: a 0-d array that is assigned the loss on the compute
device — nothing is read back, so a training step can be captured as a CUDA graph — and is
returned; without it the loss is returned as a Python float. The normalizer, too, stays on
the device when it depends on the data (VALID with an ignore_label).

Scores x are (outer, C, inner) around ``axis`` (e.g. (N, C) or (N, C, H, W) with axis 1);
``label`` holds outer * inner integer-valued numbers (any shape with that many elements,
e.g. (N,), (N, 1, 1, 1) or (N, H, W)); a label is truncated to int as Caffe's static_cast
does. ``ignore_label`` None means no label is ignored. A label outside [0, C) that is not
ignored raises ValueError where ``backend.range_checks`` says so: always for host (numpy)
arrays, for device arrays only in debug mode (Caffe only checks it in debug builds) — the
check reads the labels back.

Normalization (Caffe's LossParameter): "FULL" divides by outer * inner, "VALID" by the
number of non-ignored labels, "BATCH_SIZE" by outer, "NONE" by 1; the divisor is clamped to
at least 1. ``ws`` follows ``netforge.ops.xp`` (label-sized index arrays, plus the
(outer, C, inner) bool ``ge`` for accuracy); without it scratch is allocated per call.
"""

from __future__ import annotations

import numpy

from netforge.backend import range_checks
from netforge.ops import compiled
from netforge.ops.common import outer_channels_inner, softmax_forward
from netforge.ops.loss_terms import (
    FLT_MIN,
    check_label_range,
    finish_loss,
    flat_label_index,
    gather_into,
    gradient_scale,
    label_rows,
    normalizer,
)
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, scratch, view_as


def loss_workspace_shapes(x_shape: tuple[int, ...], axis: int = 1,
                          dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """Scratch for the loss and accuracy kernels on scores of shape ``x_shape``."""
    outer, c, inner = outer_channels_inner(x_shape, axis)
    dt, ip = numpy.dtype(dtype), numpy.dtype(numpy.intp)
    return {"scale": ((outer, 1, inner), dt), "label": ((outer, inner), ip),
            "index": ((outer, inner), ip), "picked": ((outer, inner), dt),
            "valid": ((outer, inner), numpy.dtype(bool)),
            "ge": ((outer, c, inner), numpy.dtype(bool))}


def softmax_loss_forward(x: Array, label: Array, prob: Array, *, axis: int = 1,
                         ignore_label: int | None = None, normalization: str = "VALID",
                         ws: dict | None = None, out: Array | None = None) -> float | Array:
    """loss = -sum over non-ignored positions of log(max(prob[label], FLT_MIN)) / normalizer.

    Args:
        x: scores (outer, C, inner) around ``axis``.
        label: outer * inner integer-valued labels.
        prob: x's shape, assigned softmax(x) along ``axis`` (kept for backward).
    Returns:
        The loss: ``out`` (0-d, assigned on the device) when given, else a Python float.
    """
    xp = get_array_module(x)
    outer, c, inner = outer_channels_inner(x.shape, axis)
    if compiled.active(x, label, prob):  # one pass per position, softmax and loss
        total, count, low, high = compiled.load("loss").softmax_loss_forward(
            view_as(x, (outer, c, inner)), view_as(label, (label.size,)),
            view_as(prob, (outer, c, inner)), ignore_label)
        if count and range_checks(numpy):
            check_label_range(low, high, c, ignore_label)
        # Host arrays: the total is a host number already; ``out`` is still honoured, so
        # the step's loss buffer is assigned the same way on every path.
        return finish_loss(numpy, total, normalizer(normalization, outer, inner, count), out)
    softmax_forward(x, prob, axis=axis, ws=ws)
    lab, valid, count = label_rows(xp, label, outer, c, inner, ignore_label, ws)
    idx = flat_label_index(xp, lab, outer, c, inner, ws)
    picked = scratch(ws, "picked", (outer, inner), prob.dtype, xp)
    gather_into(xp, view_as(prob, (prob.size,)), idx, picked)
    xp.maximum(picked, FLT_MIN, out=picked)
    xp.log(picked, out=picked)
    if valid is not None:
        xp.multiply(picked, valid, out=picked)
    return finish_loss(xp, picked.sum(), normalizer(normalization, outer, inner, count), out,
                   negate=True)


def softmax_loss_backward(prob: Array, label: Array, dx: Array, *, axis: int = 1,
                          ignore_label: int | None = None, normalization: str = "VALID",
                          loss_weight: float = 1.0, ws: dict | None = None) -> None:
    """dx = (prob - onehot(label)) * loss_weight / normalizer, zero at ignored positions.

    Args:
        prob: the softmax from ``softmax_loss_forward``; dx: its shape, assigned.
        loss_weight: the top's diff (the layer's loss weight), as Caffe seeds it.
    """
    xp = get_array_module(prob)
    outer, c, inner = outer_channels_inner(prob.shape, axis)
    if compiled.active(prob, label, dx):
        kernels = compiled.load("loss")
        label_flat = view_as(label, (label.size,))
        count, low, high = kernels.label_range(label_flat, c, ignore_label)
        if count and range_checks(numpy):
            check_label_range(low, high, c, ignore_label)
        scale = float(loss_weight) / normalizer(normalization, outer, inner, count)
        kernels.softmax_loss_backward(view_as(prob, (outer, c, inner)), label_flat,
                                      view_as(dx, (outer, c, inner)), ignore_label, scale)
        return
    lab, valid, count = label_rows(xp, label, outer, c, inner, ignore_label, ws)
    idx = flat_label_index(xp, lab, outer, c, inner, ws)
    norm = normalizer(normalization, outer, inner, count)
    scale = gradient_scale(xp, loss_weight, norm, dx.dtype)
    xp.multiply(prob, scale, out=dx)
    # Subtract the scaled one-hot at one entry per position: take, adjust, put back.
    flat = view_as(dx, (dx.size,))
    picked = scratch(ws, "picked", (outer, inner), dx.dtype, xp)
    gather_into(xp, flat, idx, picked)
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
             ws: dict | None = None, out: Array | None = None
             ) -> tuple[float | Array, Array | None]:
    """Top-k accuracy with Caffe's tie rule, and per-class accuracy.

    A position counts as correct when fewer than ``top_k`` *other* classes score greater
    than or equal to the label's score, i.e. ties are counted against the label (Caffe's
    ``num_better_predictions`` loop since 2016; the older partial-sort version broke ties by
    class index). Ignored positions are skipped; with none left the accuracy is 0.

    Returns:
        (accuracy, per_class): the accuracy is ``out`` (0-d, assigned on the device, nothing
        read back) when given, else a Python float; per_class (C,) holds hits / count per
        label class (0 for a class absent from the labels), or None when ``per_class`` is
        False.
    """
    xp = get_array_module(x)
    outer, c, inner = outer_channels_inner(x.shape, axis)
    lab, valid, count = label_rows(xp, label, outer, c, inner, ignore_label, ws)
    idx = flat_label_index(xp, lab, outer, c, inner, ws)
    score = scratch(ws, "picked", (outer, inner), x.dtype, xp)
    gather_into(xp, view_as(x, (x.size,)), idx, score)
    ge = scratch(ws, "ge", (outer, c, inner), bool, xp)
    xp.greater_equal(view_as(x, (outer, c, inner)), score[:, None, :], out=ge)
    at_least = idx  # the flat index is no longer needed: reuse it for the >= counts
    xp.sum(ge, axis=1, out=at_least)
    correct = ge[:, 0, :]  # likewise the first channel of ge becomes the verdict
    xp.less_equal(at_least, top_k, out=correct)  # the label itself is among the counted
    if valid is not None:
        xp.logical_and(correct, valid, out=correct)
    hits = xp.count_nonzero(correct)
    if out is None:
        acc = int(hits) / int(count) if int(count) else 0.0
    else:  # no hits when nothing counts, so hits / max(count, 1) is the 0 of that case
        out[...] = xp.asarray(hits, dtype=xp.float64) / xp.maximum(count, 1)
        acc = out
    if not per_class:
        return acc, None
    # Per-class figures are a small metric: bincount on label-sized vectors is fine here.
    nums = xp.bincount(lab.ravel() if valid is None else lab[valid], minlength=c)
    wins = xp.bincount(lab[correct], minlength=c)
    per = xp.zeros(c, dtype=x.dtype)
    xp.divide(wins, nums, out=per, where=nums > 0, casting="unsafe")
    return acc, per


# --------------------------------------------------------------------------- sigmoid CE


def sigmoid_cross_entropy_workspace_shapes(x_shape: tuple[int, ...],
                                           dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    n = int(numpy.prod(x_shape))
    dt = numpy.dtype(dtype)
    return {"term": ((n,), dt), "pos": ((n,), dt), "label": ((n,), numpy.dtype(numpy.intp)),
            "valid": ((n,), numpy.dtype(bool))}


def _target_mask(xp, target: Array, ignore_label: int | None, ws: dict | None
                 ) -> tuple[Array | None, int]:
    """(mask of non-ignored targets or None, their count); targets are compared after
    truncation to int, as Caffe's static_cast does."""
    n = target.size
    if ignore_label is None:
        return None, n
    lab = scratch(ws, "label", (n,), numpy.intp, xp)
    xp.copyto(lab, view_as(target, (n,)), casting="unsafe")
    valid = scratch(ws, "valid", (n,), bool, xp)
    xp.not_equal(lab, int(ignore_label), out=valid)
    return valid, xp.count_nonzero(valid)


def sigmoid_cross_entropy_forward(x: Array, target: Array, *, ignore_label: int | None = None,
                                  normalization: str = "BATCH_SIZE",
                                  ws: dict | None = None,
                                  out: Array | None = None) -> float | Array:
    """Cross-entropy of sigmoid(x) against targets in [0, 1], in Caffe's stable form:
    Σ log(1 + e^(−|x|)) − x·(t − [x ≥ 0]) over non-ignored entries, / normalizer.

    Args:
        x: scores, any shape (N, ...); target: as many values (soft targets allowed).
        normalization: as SoftmaxWithLoss, with outer = N and inner = count / N.
    """
    xp = get_array_module(x)
    n = x.size
    x1, t1 = view_as(x, (n,)), view_as(target, (n,))
    term = scratch(ws, "term", (n,), x.dtype, xp)
    pos = scratch(ws, "pos", (n,), x.dtype, xp)
    xp.abs(x1, out=term)
    xp.negative(term, out=term)
    xp.exp(term, out=term)
    xp.log1p(term, out=term)  # log(1 + e^-|x|): never overflows
    xp.greater_equal(x1, 0, out=pos, casting="unsafe")
    xp.subtract(t1, pos, out=pos)
    xp.multiply(pos, x1, out=pos)
    xp.subtract(term, pos, out=term)
    valid, count = _target_mask(xp, target, ignore_label, ws)
    if valid is not None:
        xp.multiply(term, valid, out=term)
    outer = x.shape[0] if x.ndim else 1
    return finish_loss(xp, term.sum(), normalizer(normalization, outer, n // max(outer, 1), count),
                   out)


def sigmoid_cross_entropy_backward(x: Array, target: Array, dx: Array, *,
                                   ignore_label: int | None = None,
                                   normalization: str = "BATCH_SIZE", loss_weight: float = 1.0,
                                   ws: dict | None = None) -> None:
    """dx = (sigmoid(x) − t) · loss_weight / normalizer, zero at ignored targets."""
    xp = get_array_module(x)
    n = x.size
    dx1 = view_as(dx, (n,))
    xp.multiply(view_as(x, (n,)), 0.5, out=dx1)  # sigmoid = (1 + tanh(x/2)) / 2: stable
    xp.tanh(dx1, out=dx1)
    xp.multiply(dx1, 0.5, out=dx1)
    xp.add(dx1, 0.5, out=dx1)
    xp.subtract(dx1, view_as(target, (n,)), out=dx1)
    valid, count = _target_mask(xp, target, ignore_label, ws)
    if valid is not None:
        xp.multiply(dx1, valid, out=dx1)
    outer = x.shape[0] if x.ndim else 1
    norm = normalizer(normalization, outer, n // max(outer, 1), count)
    scale = gradient_scale(xp, loss_weight, norm, dx.dtype)
    xp.multiply(dx1, scale, out=dx1)


# --------------------------------------------------------------------------- multinomial


# Caffe's kLOG_THRESHOLD: probabilities are clipped here before the log.
LOG_THRESHOLD = 1e-20


def _picked(xp, prob: Array, label: Array, ws: dict | None) -> tuple[Array, Array]:
    """Flat indices i·dim + label[i] into prob viewed as (N, dim), and the picked values
    clipped at LOG_THRESHOLD."""
    n = prob.shape[0]
    dim = prob.size // n if n else 0
    lab, _, _ = label_rows(xp, label, n, dim, 1, None, ws)
    idx = flat_label_index(xp, lab, n, dim, 1, ws)
    picked = scratch(ws, "picked", (n, 1), prob.dtype, xp)
    gather_into(xp, view_as(prob, (prob.size,)), idx, picked)
    xp.maximum(picked, LOG_THRESHOLD, out=picked)
    return idx, picked


def multinomial_logistic_forward(prob: Array, label: Array, *, ws: dict | None = None,
                                 out: Array | None = None) -> float | Array:
    """loss = −Σ_i log(max(prob[i, label[i]], 1e-20)) / N.

    Args:
        prob: probabilities (N, ...), classes = all non-batch entries; label: N values.
        ws: from ``loss_workspace_shapes((N, dim))``.
    """
    xp = get_array_module(prob)
    _, picked = _picked(xp, prob, label, ws)
    xp.log(picked, out=picked)
    return finish_loss(xp, picked.sum(), float(prob.shape[0]), out, negate=True)


def multinomial_logistic_backward(prob: Array, label: Array, dx: Array, *,
                                  loss_weight: float = 1.0, ws: dict | None = None) -> None:
    """dx[i, label[i]] = −loss_weight / (N · max(prob[i, label[i]], 1e-20)), else 0."""
    xp = get_array_module(prob)
    idx, picked = _picked(xp, prob, label, ws)
    xp.divide(-gradient_scale(xp, loss_weight, float(prob.shape[0]), dx.dtype), picked, out=picked)
    dx.fill(0)
    flat = view_as(dx, (dx.size,))
    if xp is numpy:
        xp.put(flat, idx, picked, mode="clip")  # idx is in range
    else:
        flat[idx] = picked


# --------------------------------------------------------------------------- infogain


def infogain_workspace_shapes(x_shape: tuple[int, ...], axis: int = 1,
                              dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """The loss scratch plus log-probabilities, the gathered rows of H and H's row sums."""
    outer, c, inner = outer_channels_inner(x_shape, axis)
    dt = numpy.dtype(dtype)
    spec = loss_workspace_shapes(x_shape, axis, dtype)
    spec.update({"logp": ((outer, c, inner), dt), "rows": ((outer, inner, c), dt),
                 "rowsum": ((c,), dt), "validf": ((outer, inner), dt)})
    return spec


def _infogain_rows(xp, label, h, outer, c, inner, ignore_label, ws):
    """Labels, the validity mask as numbers (None when nothing is ignored), the valid count,
    and H's row for each position (outer, inner, C), zero at ignored positions."""
    lab, valid, count = label_rows(xp, label, outer, c, inner, ignore_label, ws)
    rows = scratch(ws, "rows", (outer, inner, c), h.dtype, xp)
    gather_into(xp, view_as(h, (c, c)), lab, rows, axis=0)
    if valid is None:
        return lab, None, count, rows
    # A float copy of the mask: a broadcast bool operand would make numpy buffer a cast copy.
    mask = scratch(ws, "validf", (outer, inner), h.dtype, xp)
    xp.copyto(mask, valid)
    xp.multiply(rows, mask[:, :, None], out=rows)
    return lab, mask, count, rows


def infogain_forward(x: Array, label: Array, h: Array, prob: Array, *, axis: int = 1,
                     ignore_label: int | None = None, normalization: str = "VALID",
                     ws: dict | None = None, out: Array | None = None) -> float | Array:
    """loss = −Σ_positions Σ_l H[label, l] · log(max(softmax(x)[l], 1e-20)) / normalizer.

    Caffe 1.0's InfogainLoss takes scores and applies the softmax itself.

    Args:
        x: scores (outer, C, inner) around ``axis``; label: outer · inner values.
        h: the infogain matrix, C·C values (row = true label); prob: x's shape, assigned.
    """
    xp = get_array_module(x)
    outer, c, inner = outer_channels_inner(x.shape, axis)
    softmax_forward(x, prob, axis=axis, ws=ws)
    _, _, count, rows = _infogain_rows(xp, label, h, outer, c, inner, ignore_label, ws)
    logp = scratch(ws, "logp", (outer, c, inner), x.dtype, xp)
    xp.maximum(view_as(prob, (outer, c, inner)), LOG_THRESHOLD, out=logp)
    xp.log(logp, out=logp)
    total = xp.einsum("oil,oli->", rows, logp)
    return finish_loss(xp, total, normalizer(normalization, outer, inner, count), out, negate=True)


def infogain_backward(prob: Array, label: Array, h: Array, dx: Array, *, axis: int = 1,
                      ignore_label: int | None = None, normalization: str = "VALID",
                      loss_weight: float = 1.0, ws: dict | None = None) -> None:
    """dx[l] = (prob[l] · Σ_k H[label, k] − H[label, l]) · loss_weight / normalizer, zero at
    ignored positions."""
    xp = get_array_module(prob)
    outer, c, inner = outer_channels_inner(prob.shape, axis)
    lab, mask, count, rows = _infogain_rows(xp, label, h, outer, c, inner, ignore_label, ws)
    rowsum = scratch(ws, "rowsum", (c,), h.dtype, xp)
    xp.sum(view_as(h, (c, c)), axis=1, out=rowsum)
    picked = scratch(ws, "picked", (outer, inner), prob.dtype, xp)
    gather_into(xp, rowsum, lab, picked)
    if mask is not None:
        xp.multiply(picked, mask, out=picked)
    dx3 = view_as(dx, (outer, c, inner))
    xp.multiply(view_as(prob, (outer, c, inner)), picked[:, None, :], out=dx3)
    xp.subtract(dx3, rows.transpose(0, 2, 1), out=dx3)
    xp.multiply(dx3, gradient_scale(xp, loss_weight, normalizer(normalization, outer, inner, count),
                            dx.dtype), out=dx3)

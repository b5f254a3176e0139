"""Loss and metric kernels: softmax cross-entropy (Caffe's SoftmaxWithLoss) and accuracy.

    softmax_loss_forward(x, label, prob, *, axis, ignore_label, normalization) -> loss
    softmax_loss_backward(prob, label, dx, *, axis, ignore_label, normalization, loss_weight)
    accuracy(x, label, *, top_k, axis, ignore_label) -> (accuracy, per_class_accuracy)

Scores x are (outer, C, inner...) around ``axis``; labels hold outer·inner integer values.
"""

from __future__ import annotations

import numpy as np

from netforge.ops._xp import Array, get_array_module
from netforge.ops.common import softmax_forward

_FLT_MIN = float(np.finfo(np.float32).tiny)


def _views(x: Array, label: Array, axis: int):
    outer = int(np.prod(x.shape[:axis]))
    classes = x.shape[axis]
    inner = int(np.prod(x.shape[axis + 1 :]))
    return outer, classes, inner, label.reshape(outer, inner)


def normalizer(mode: str, outer: int, inner: int, valid: int) -> float:
    """Caffe's loss divisor, clamped to at least 1."""
    value = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return float(max(value, 1))


def _label_index(label2: Array, ignore_label: int | None, classes: int):
    xp = get_array_module(label2)
    lab = label2.astype(xp.int64)
    valid = xp.ones(lab.shape, dtype=bool) if ignore_label is None else lab != ignore_label
    if bool(((lab < 0) | (lab >= classes))[valid].any()):
        bad = lab[valid & ((lab < 0) | (lab >= classes))][0]
        raise ValueError(f"label {int(bad)} is outside [0, {classes})")
    return xp.where(valid, lab, 0), valid


def softmax_loss_forward(x: Array, label: Array, prob: Array, *, axis: int = 1,
                         ignore_label: int | None = None, normalization: str = "VALID") -> float:
    """Mean −log p[label] (clamped at FLT_MIN); ``prob`` receives the softmax."""
    xp = get_array_module(x)
    softmax_forward(x, prob, axis=axis)
    outer, classes, inner, label2 = _views(x, label, axis)
    lab, valid = _label_index(label2, ignore_label, classes)
    p3 = prob.reshape(outer, classes, inner)
    picked = xp.take_along_axis(p3, lab[:, None, :], axis=1)[:, 0, :]
    logs = -xp.log(xp.maximum(picked, _FLT_MIN))
    total = float((logs * valid).sum())
    return total / normalizer(normalization, outer, inner, int(valid.sum()))


def softmax_loss_backward(prob: Array, label: Array, dx: Array, *, axis: int = 1,
                          ignore_label: int | None = None, normalization: str = "VALID",
                          loss_weight: float = 1.0) -> None:
    """dx = (prob − onehot(label)) · loss_weight / normalizer; zero where ignored."""
    xp = get_array_module(prob)
    outer, classes, inner, label2 = _views(prob, label, axis)
    lab, valid = _label_index(label2, ignore_label, classes)
    d3 = dx.reshape(outer, classes, inner)
    xp.copyto(d3, prob.reshape(outer, classes, inner))
    rows = xp.arange(outer)[:, None]
    cols = xp.arange(inner)[None, :]
    d3[rows, lab, cols] -= 1.0
    d3 *= valid[:, None, :]
    d3 *= loss_weight / normalizer(normalization, outer, inner, int(valid.sum()))


def accuracy(x: Array, label: Array, *, top_k: int = 1, axis: int = 1,
             ignore_label: int | None = None):
    """Fraction of positions whose label scores among the top_k (Caffe: correct when fewer
    than top_k classes score strictly higher than the label). Also per-class accuracy."""
    xp = get_array_module(x)
    outer, classes, inner, label2 = _views(x, label, axis)
    lab, valid = _label_index(label2, ignore_label, classes)
    x3 = x.reshape(outer, classes, inner)
    true_score = xp.take_along_axis(x3, lab[:, None, :], axis=1)
    higher = (x3 > true_score).sum(axis=1)
    correct = (higher < top_k) & valid
    count = int(valid.sum())
    acc = float(correct.sum()) / count if count else 0.0
    per_class = np.zeros(classes)
    lab_h, valid_h, correct_h = (np.asarray(a.get() if hasattr(a, "get") else a)
                                 for a in (lab, valid, correct))
    for c in range(classes):
        members = valid_h & (lab_h == c)
        if members.any():
            per_class[c] = correct_h[members].mean()
    return acc, per_class

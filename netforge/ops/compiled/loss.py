"""Softmax + multinomial logistic loss (Caffe's SoftmaxWithLoss), forward and backward, one
pass per position over the C scores.

Scores are the (outer, C, inner) view; labels the flat outer*inner array, truncated to int
as the reference does. Forward returns the sum of -log(max(p_label, FLT_MIN)) over valid
positions (float64); ``label_range`` gives their count and the smallest and largest valid
label, so that the caller raises the reference's error for an out-of-range one.
"""

from __future__ import annotations

import math

import numpy

from netforge.ops.compiled.jit import kernel

_FLT_MIN = float(numpy.finfo(numpy.float32).tiny)


@kernel
def _forward(x, label, prob, ignore, has_ignore):
    outer, c, inner = x.shape
    total = 0.0
    for o in range(outer):
        for i in range(inner):
            top = x[o, 0, i]
            for k in range(1, c):
                top = max(top, x[o, k, i])
            norm = x.dtype.type(0)
            for k in range(c):
                e = math.exp(x[o, k, i] - top)
                prob[o, k, i] = e
                norm += e
            inv = 1 / norm
            for k in range(c):
                prob[o, k, i] *= inv
            lab = int(label[o * inner + i])
            if has_ignore and lab == ignore:
                continue
            if 0 <= lab < c:
                total -= math.log(max(prob[o, lab, i], _FLT_MIN))
    return total


@kernel
def _backward(prob, label, dx, ignore, has_ignore, scale):
    outer, c, inner = prob.shape
    for o in range(outer):
        for i in range(inner):
            lab = int(label[o * inner + i])
            if has_ignore and lab == ignore:
                for k in range(c):
                    dx[o, k, i] = 0
                continue
            for k in range(c):
                dx[o, k, i] = prob[o, k, i] * scale
            dx[o, lab, i] -= scale


@kernel
def _valid_range(label, c, ignore, has_ignore):
    count = 0
    low = 0
    high = 0
    for j in range(label.size):
        lab = int(label[j])
        if has_ignore and lab == ignore:
            continue
        if count == 0:
            low = lab
            high = lab
        low = min(low, lab)
        high = max(high, lab)
        count += 1
    return count, low, high


def softmax_loss_forward(x3, label_flat, prob3, ignore_label):
    """(loss sum, valid count, lowest valid label, highest valid label); the label statistics
    come from the same pass ``label_range`` makes (a second, label-sized loop)."""
    has_ignore = ignore_label is not None
    ignore = int(ignore_label) if has_ignore else 0
    total = _forward(x3, label_flat, prob3, ignore, has_ignore)
    count, low, high = _valid_range(label_flat, x3.shape[1], ignore, has_ignore)
    return total, count, low, high


def label_range(label_flat, c: int, ignore_label):
    """(valid count, lowest, highest) of the non-ignored labels."""
    has_ignore = ignore_label is not None
    return _valid_range(label_flat, c, int(ignore_label) if has_ignore else 0, has_ignore)


def softmax_loss_backward(prob3, label_flat, dx3, ignore_label, scale: float) -> None:
    """dx = (prob - onehot) * scale, zero at ignored positions (labels checked already)."""
    has_ignore = ignore_label is not None
    _backward(prob3, label_flat, dx3, int(ignore_label) if has_ignore else 0, has_ignore,
              prob3.dtype.type(scale))

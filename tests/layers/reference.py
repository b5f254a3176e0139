"""Independent, deliberately naive reference implementations (explicit loops) of Caffe's
layer semantics, for forward checks. Slow, obviously right, tiny inputs only."""

from __future__ import annotations

import math

import numpy as np

from tests.ops.naive import conv2d  # noqa: F401  (one naive convolution serves both suites)


def _pool_size(size, k, p, s, ceil=True):
    span = size + 2 * p - k
    out = (math.ceil(span / s) if ceil else span // s) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool2d(x, kernel, stride, pad, method, ceil=True):
    n, c, h, w = x.shape
    oh = _pool_size(h, kernel[0], pad[0], stride[0], ceil)
    ow = _pool_size(w, kernel[1], pad[1], stride[1], ceil)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
            he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
            area = (he - hs) * (we - ws)  # clipped to the padded extent (Caffe's divisor)
            hs0, ws0, he0, we0 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs0:he0, ws0:we0]
            if method == "MAX":
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                y[:, :, i, j] = window.sum(axis=(2, 3)) / area
    return y


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_loss(x, label, ignore_label=None, normalization="VALID"):
    p = softmax(x, 1)
    n, c = x.shape[:2]
    inner = int(np.prod(x.shape[2:]))
    p = p.reshape(n, c, inner)
    label = label.reshape(n, inner)
    total, valid = 0.0, 0
    for i in range(n):
        for k in range(inner):
            lab = int(label[i, k])
            if ignore_label is not None and lab == ignore_label:
                continue
            total -= math.log(max(p[i, lab, k], np.finfo(np.float32).tiny))
            valid += 1
    divisor = {"FULL": n * inner, "VALID": valid, "BATCH_SIZE": n, "NONE": 1}[normalization]
    return total / max(divisor, 1)


def accuracy(x, label, top_k=1, ignore_label=None):
    n, c = x.shape[:2]
    correct, count = 0, 0
    for i in range(n):
        lab = int(label[i])
        if ignore_label is not None and lab == ignore_label:
            continue
        higher = sum(1 for k in range(c) if x[i, k] > x[i, lab])
        correct += higher < top_k
        count += 1
    return correct / max(count, 1)

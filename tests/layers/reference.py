"""Forward references for the layer table: thin adapters over the naive loop references of
``tests/ops/naive.py`` (one independent reference per Caffe rule serves both suites), plus a
pooling loop that also covers Caffe's FLOOR rounding."""

from __future__ import annotations

import numpy as np

from tests.ops import naive
from tests.ops.naive import conv2d  # noqa: F401  (re-exported for the layer table)


def pool2d(x, kernel, stride, pad, method, ceil=True):
    n, c, h, w = x.shape
    oh = naive.pool_size(h, kernel[0], pad[0], stride[0], ceil)
    ow = naive.pool_size(w, kernel[1], pad[1], stride[1], ceil)
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
    return naive.softmax(x, axis)


def softmax_loss(x, label, ignore_label=None, normalization="VALID"):
    return naive.softmax_loss(x, label, 1, ignore_label, normalization)[0]


def accuracy(x, label, top_k=1, ignore_label=None):
    return naive.accuracy(x, label, top_k, 1, ignore_label)[0]

"""Deliberately naive references for the kernels under test: explicit loops over output
pixels, written from Caffe's definitions and sharing no code with ``netforge.ops``. Slow but
obviously right; use tiny shapes."""

from __future__ import annotations

import math

import numpy as np


def conv2d(x, w, b, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """Caffe convolution, one multiply-add at a time."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    og = o // group
    y = np.zeros((n, o, oh, ow))
    for ni in range(n):
        for oi in range(o):
            g = oi // og
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0 if b is None else b[oi]
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                r = i * stride[0] - pad[0] + p * dilation[0]
                                s = j * stride[1] - pad[1] + q * dilation[1]
                                if 0 <= r < h and 0 <= s < wd:
                                    acc += w[oi, ci, p, q] * x[ni, g * cg + ci, r, s]
                    y[ni, oi, i, j] = acc
    return y


def pool_size(size, k, p, s, ceil_mode=True):
    """Caffe PoolingLayer::Reshape, spelled out."""
    if ceil_mode:
        out = int(math.ceil((size + 2 * p - k) / s)) + 1
    else:
        out = int(math.floor((size + 2 * p - k) / s)) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def max_pool(x, kernel, stride, pad):
    """Returns (y, argmax) with Caffe's window clipping and strict '>' scan."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh, ow = pool_size(h, kh, ph, sh), pool_size(w, kw, pw, sw)
    y = np.empty((n, c, oh, ow))
    arg = np.empty((n, c, oh, ow), dtype=np.int64)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * sh - ph, j * sw - pw
                    he, we = min(hs + kh, h), min(ws + kw, w)
                    hs, ws = max(hs, 0), max(ws, 0)
                    best, where = -np.finfo(np.float32).max, -1
                    for r in range(hs, he):
                        for s in range(ws, we):
                            if x[ni, ci, r, s] > best:
                                best, where = x[ni, ci, r, s], r * w + s
                    y[ni, ci, i, j], arg[ni, ci, i, j] = best, where
    return y, arg


def ave_pool(x, kernel, stride, pad):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh, ow = pool_size(h, kh, ph, sh), pool_size(w, kw, pw, sw)
    y = np.empty((n, c, oh, ow))
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * sh - ph, j * sw - pw
                    he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                    size = (he - hs) * (we - ws)
                    hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                    # A window wholly past the image (ceil mode, stride > kernel, no pad):
                    # Caffe computes 0/0; netforge defines it as 0.
                    y[ni, ci, i, j] = x[ni, ci, hs:he, ws:we].sum() / size if size else 0.0
    return y


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_loss(x, label, axis, ignore_label, normalization):
    """(loss, prob) following SoftmaxWithLossLayer::Forward_cpu's loops."""
    prob = softmax(x, axis)
    outer = int(np.prod(x.shape[:axis]))
    c = x.shape[axis]
    inner = int(np.prod(x.shape[axis + 1:]))
    p3 = prob.reshape(outer, c, inner)
    lab = label.reshape(outer, inner)
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            value = int(lab[i, j])
            if ignore_label is not None and value == ignore_label:
                continue
            loss -= math.log(max(p3[i, value, j], np.finfo(np.float32).tiny))
            count += 1
    norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}
    return loss / max(1.0, norm[normalization]), prob


def accuracy(x, label, top_k, axis, ignore_label):
    """(accuracy, per_class) with AccuracyLayer::Forward_cpu's counting loop."""
    outer = int(np.prod(x.shape[:axis]))
    c = x.shape[axis]
    inner = int(np.prod(x.shape[axis + 1:]))
    x3 = x.reshape(outer, c, inner)
    lab = label.reshape(outer, inner)
    hits, count = 0, 0
    per_hits, per_count = np.zeros(c), np.zeros(c)
    for i in range(outer):
        for j in range(inner):
            value = int(lab[i, j])
            if ignore_label is not None and value == ignore_label:
                continue
            per_count[value] += 1
            true_score = x3[i, value, j]
            better = -1  # the label itself is counted below
            for k in range(c):
                if x3[i, k, j] >= true_score:
                    better += 1
            if better < top_k:
                hits += 1
                per_hits[value] += 1
            count += 1
    per = np.where(per_count > 0, per_hits / np.maximum(per_count, 1), 0.0)
    return (hits / count if count else 0.0), per


def deconv2d(x, w, b, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """Caffe deconvolution as a scatter: every input pixel adds its weighted kernel into the
    output window it maps to (w is (C_in, C_out/group, kh, kw))."""
    n, c_in, h, wd = x.shape
    _, cog, kh, kw = w.shape
    oh = stride[0] * (h - 1) + dilation[0] * (kh - 1) + 1 - 2 * pad[0]
    ow = stride[1] * (wd - 1) + dilation[1] * (kw - 1) + 1 - 2 * pad[1]
    cig = c_in // group
    y = np.zeros((n, cog * group, oh, ow))
    for ni in range(n):
        for ci in range(c_in):
            g = ci // cig
            for i in range(h):
                for j in range(wd):
                    for co in range(cog):
                        for p in range(kh):
                            for q in range(kw):
                                r = i * stride[0] - pad[0] + p * dilation[0]
                                s = j * stride[1] - pad[1] + q * dilation[1]
                                if 0 <= r < oh and 0 <= s < ow:
                                    y[ni, g * cog + co, r, s] += x[ni, ci, i, j] * w[ci, co, p, q]
    if b is not None:
        y += np.asarray(b).reshape(1, -1, 1, 1)
    return y


def _stochastic_windows(h, w, kernel, stride):
    """(i, j, rows, cols) of every unpadded ceil-mode pooling window (Caffe's STOCHASTIC)."""
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = pool_size(h, kh, 0, sh), pool_size(w, kw, 0, sw)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh, j * sw
            yield i, j, range(hs, min(hs + kh, h)), range(ws, min(ws + kw, w))


def stochastic_pool_test(x, kernel, stride):
    """sum(x^2) / (FLT_MIN + sum(x)) over each window, accumulated as Caffe's TEST kernel."""
    n, c, h, w = x.shape
    oh = pool_size(h, kernel[0], 0, stride[0])
    ow = pool_size(w, kernel[1], 0, stride[1])
    y = np.zeros((n, c, oh, ow))
    for ni in range(n):
        for ci in range(c):
            for i, j, rows, cols in _stochastic_windows(h, w, kernel, stride):
                total, squares = float(np.finfo(np.float32).tiny), 0.0
                for r in rows:
                    for s in cols:
                        total += x[ni, ci, r, s]
                        squares += x[ni, ci, r, s] ** 2
                y[ni, ci, i, j] = squares / total
    return y


def stochastic_pool_train(x, kernel, stride, uniform):
    """Caffe's TRAIN kernel given the uniform draws (one per output): the first pixel, in
    row-major window order, whose running sum reaches u * window sum. Returns (y, index)."""
    n, c, h, w = x.shape
    y = np.zeros(uniform.shape)
    index = np.full(uniform.shape, -1, dtype=np.int64)
    for ni in range(n):
        for ci in range(c):
            for i, j, rows, cols in _stochastic_windows(h, w, kernel, stride):
                pixels = [(r, s) for r in rows for s in cols]
                threshold = uniform[ni, ci, i, j] * sum(x[ni, ci, r, s] for r, s in pixels)
                running = 0.0
                for r, s in pixels:
                    running += x[ni, ci, r, s]
                    if running >= threshold:
                        y[ni, ci, i, j], index[ni, ci, i, j] = x[ni, ci, r, s], r * w + s
                        break
    return y, index


def spp(x, pyramid_height, method):
    """Caffe's SPP: per level, kernel ceil(size / bins), pad (kernel * bins - size + 1) // 2,
    stride = kernel; each level pooled, flattened per image and concatenated."""
    n, c, h, w = x.shape
    parts = []
    for level in range(pyramid_height):
        bins = 2 ** level
        kh, kw = math.ceil(h / bins), math.ceil(w / bins)
        ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        pool = max_pool if method == "MAX" else ave_pool
        out = pool(x, (kh, kw), (kh, kw), (ph, pw))
        if method == "MAX":
            out = out[0]
        if pyramid_height == 1:
            return out
        parts.append(out.reshape(n, -1))
    return np.concatenate(parts, axis=1)


def im2col_images(x, kernel, pad, stride, dilation):
    """Caffe's Im2col layer output (N, C*kh*kw, OH, OW), one element at a time."""
    n, c, h, w = x.shape
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    y = np.zeros((n, c * kh * kw, oh, ow))
    for ni in range(n):
        for ci in range(c):
            for p in range(kh):
                for q in range(kw):
                    row = (ci * kh + p) * kw + q
                    for i in range(oh):
                        for j in range(ow):
                            r, s = i * sh - ph + p * dh, j * sw - pw + q * dw
                            if 0 <= r < h and 0 <= s < w:
                                y[ni, row, i, j] = x[ni, ci, r, s]
    return y

"""An independent LeNet forward for checking the server's answers: the weights read from the
.caffemodel's wire format with the generated protobuf module (not through netforge.Net), and
convolution, pooling and inner products written with numpy's sliding windows and einsum."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from netforge import netforge_pb2 as pb


def read_caffemodel(path) -> dict[str, list[np.ndarray]]:
    net = pb.NetParameter()
    net.ParseFromString(open(path, "rb").read())
    weights = {}
    for layer in net.layer:
        if layer.blobs:
            weights[layer.name] = [np.asarray(b.data, np.float64).reshape(tuple(b.shape.dim))
                                   for b in layer.blobs]
    return weights


def conv(x, w, b):
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))  # n c oh ow kh kw
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def max_pool(x, k=2):
    n, c, h, w = x.shape
    oh, ow = -(-(h - k) // k) + 1, -(-(w - k) // k) + 1  # Caffe's ceil rounding
    padded = np.full((n, c, (oh - 1) * k + k, (ow - 1) * k + k), -np.inf)
    padded[:, :, :h, :w] = x
    return padded.reshape(n, c, oh, k, ow, k).max(axis=(3, 5))


def lenet_probabilities(weights, images_uint8: np.ndarray) -> np.ndarray:
    """(N, 10) softmax of LeNet on (N, 28, 28) uint8 digits scaled by 1/256."""
    x = images_uint8.astype(np.float64)[:, None] * 0.00390625
    x = max_pool(conv(x, *weights["conv1"]))
    x = max_pool(conv(x, *weights["conv2"]))
    w, b = weights["ip1"]
    x = np.maximum(x.reshape(len(x), -1) @ w.T + b, 0)
    w, b = weights["ip2"]
    scores = x @ w.T + b
    scores -= scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def confusion(truth, predicted, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[int(t), int(p)] += 1
    return matrix

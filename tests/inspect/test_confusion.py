"""Per-class accuracy and the confusion matrix (netforge/inspect/confusion.py, behind
``netforge test --confusion``) against plain counting loops."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError
from netforge.inspect.confusion import Confusion, add_batch, confusion_of_net
from netforge.net import Net


def naive_confusion(truth, predicted, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[int(t), int(p)] += 1
    return matrix


def test_confusion_counts_like_plain_loops():
    rng = np.random.default_rng(3)
    matrix = np.zeros((5, 5), dtype=np.int64)
    truth_all, predicted_all = [], []
    for _ in range(4):
        scores = rng.normal(size=(12, 5, 1, 1))
        labels = rng.integers(0, 5, size=12).astype(np.float32)
        labels[0] = 4  # the ignored label: counted nowhere
        add_batch(matrix, scores, labels, ignore_label=4)
        keep = labels != 4
        truth_all += list(labels[keep])
        predicted_all += list(scores.reshape(12, 5).argmax(axis=1)[keep])
    np.testing.assert_array_equal(matrix, naive_confusion(truth_all, predicted_all, 5))
    result = Confusion(matrix, labels=["a", "b", "c", "d", "e"])
    assert result.per_class[4] is None  # no sample of class e counted
    assert result.accuracy == pytest.approx(np.mean(np.array(truth_all) ==
                                                    np.array(predicted_all)))
    table = result.format_table().splitlines()
    assert table[0].startswith(f"accuracy = {result.accuracy:.4f}")
    assert table[5] == "class e: accuracy = - (0 samples)"
    with pytest.raises(Exception, match="outside the 5 classes"):
        add_batch(matrix, np.zeros((1, 5)), np.array([7.0]))


def test_a_net_without_scores_and_labels_is_refused():
    param = pb.NetParameter(name="plain")
    layer = param.layer.add(name="data", type="Input", top=["data"])
    layer.input_param.shape.add(dim=[2, 3])
    ip = param.layer.add(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    ip.inner_product_param.num_output = 4
    net = Net(param, "test")
    with pytest.raises(ConfigError, match='net "plain" has no Accuracy or SoftmaxWithLoss'):
        confusion_of_net(net, 1)

"""One flat gradient buffer, buckets all-reduced as backward finishes their layers."""

from __future__ import annotations

import numpy as np

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.net import Net
from netforge.train.parallel import collectives
from tests.train.parallel.helpers import data_net


class RecordingComm:
    """A stand-in for MpiComm: 2 "ranks" holding the same gradient; records when each
    bucket's all-reduce starts (the number of layers backward still had to do)."""

    world = 2
    wait_seconds = 0.0

    def __init__(self):
        self.started = []
        self.net = None

    def start_allreduce(self, buffer):
        self.started.append((self.remaining(), buffer.size))
        buffer *= 2  # the sum over two ranks with equal gradients
        return None

    def remaining(self):
        return sum(1 for step in self.net.plan.steps
                   if step.need_backward and not getattr(step.layer, "backward_done", 0))

    def progress(self, requests):
        pass

    def wait(self, requests, what):
        pass


def test_gradient_buckets_overlap_backward_and_average(lmdb_db, monkeypatch):
    net = Net(net_param(lmdb_db), "train", seed=3)
    reference = Net(net_param(lmdb_db), "train", seed=3)
    comm = RecordingComm()
    comm.net = net
    for layer in net.layers:
        original = layer.backward

        def marked(tops, propagate, bottoms, layer=layer, original=original):
            original(tops, propagate, bottoms)
            layer.backward_done = 1

        monkeypatch.setattr(layer, "backward", marked)
    buckets = collectives.GradientBuckets(net, comm, bucket_bytes=64)
    net.clear_param_diffs()
    net.forward_range(0, len(net.layers) - 1)
    buckets.reduce_during_backward(net)
    reference.clear_param_diffs()
    reference.forward_backward()
    for mine, theirs in zip(net.learnable_params, reference.learnable_params, strict=True):
        np.testing.assert_allclose(mine.blob.diff, theirs.blob.diff, rtol=1e-6)
        assert np.shares_memory(mine.blob.diff, buckets.flat)
    assert sum(size for _, size in comm.started) == buckets.flat.size
    # The last layer's parameters go first, while backward still has the others to do.
    assert comm.started[0][0] > 0 and comm.started[-1][0] == 0


def net_param(db):

    return config.parse_text(data_net(db, 8), pb.NetParameter())


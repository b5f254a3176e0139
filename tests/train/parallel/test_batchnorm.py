"""BatchNorm under data-parallel training: per-rank statistics (Caffe's default), or, when
synchronised, the global batch's statistics, so that 2 ranks on B records each compute what
one process computes on the 2B records.

The ranks here are threads of one process whose reducer sums in rank order (MPI is tested
end to end in test_driver.py); the reference is an ordinary 1-process net on the whole batch.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.net import Net


class ThreadRanks:
    """``world`` ranks as threads; ``member(r).sum_in_place`` is the ranks' all-reduce."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=30)
        self.slots: list = [None] * world
        self.calls = 0

    def member(self, rank: int):
        ranks = self

        class Member:
            world = ranks.world

            def sum_in_place(self, array):
                ranks.slots[rank] = np.array(array)
                ranks.barrier.wait()
                total = sum(ranks.slots[1:], ranks.slots[0].copy())
                if rank == 0:
                    ranks.calls += 1
                ranks.barrier.wait()
                array[...] = total

        return Member()


def _net(batch: int, sync_field: bool = False) -> Net:
    sync = " sync_statistics: true" if sync_field else ""
    return Net(config.parse_text(f"""
        force_backward: true
        layer {{ name: "x" type: "Input" top: "x" top: "t"
                input_param {{ shape {{ dim: {batch} dim: 3 dim: 4 dim: 4 }}
                               shape {{ dim: {batch} dim: 2 }} }} }}
        layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "y"
                batch_norm_param {{ moving_average_fraction: 0.9{sync} }} }}
        layer {{ name: "scale" type: "Scale" bottom: "y" top: "y"
                scale_param {{ bias_term: true filler {{ type: "uniform" min: 0.5 max: 2 }}
                               bias_filler {{ type: "uniform" min: -1 max: 1 }} }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "y" top: "z"
                inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
        layer {{ name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "t" top: "loss" }}
        """, pb.NetParameter()), "train", seed=4)


def _close(got, want, tolerance: float = 1e-5) -> None:
    """Relative to the array's norm: the sums over 2 ranks and over the whole batch round
    differently, which shows most in entries that are small by cancellation."""
    scale = np.linalg.norm(want)
    if scale == 0:  # BatchNorm's statistics: no gradient anywhere
        np.testing.assert_array_equal(got, want)
        return
    error = np.linalg.norm(got - want) / scale
    assert error <= tolerance, error


def _run_ranks(nets, inputs, world):
    errors = []

    def work(rank):
        try:
            net = nets[rank]
            for name, value in inputs.items():
                net.blobs[name].data[...] = value[rank::world]  # its records, as Data reads
            net.clear_param_diffs()
            net.forward_backward()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


@pytest.mark.parametrize("how", ["option", "field"])
def test_synchronised_batchnorm_on_two_ranks_equals_one_process_on_the_whole_batch(how):
    world, rows = 2, 6
    rng = np.random.default_rng(1)
    inputs = {"x": rng.normal(2.0, 3.0, (rows * world, 3, 4, 4)).astype(np.float32),
              "t": rng.normal(size=(rows * world, 2)).astype(np.float32)}
    whole = _net(rows * world)
    ranks = ThreadRanks(world)
    nets = [_net(rows, sync_field=how == "field") for _ in range(world)]
    for rank, net in enumerate(nets):
        bn = net.layer_dict["bn"]
        assert bn.sync_requested == (how == "field")
        bn.synchronise(ranks.member(rank))  # what DataParallel.attach does
    for _ in range(3):  # the running statistics accumulate, the weights train
        for name, value in inputs.items():
            whole.blobs[name].data[...] = value
        whole.clear_param_diffs()
        whole.forward_backward()
        _run_ranks(nets, inputs, world)
        ref_bn = whole.layer_dict["bn"]
        for rank, net in enumerate(nets):
            bn = net.layer_dict["bn"]
            np.testing.assert_allclose(bn.mean, ref_bn.mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(bn.var, ref_bn.var, rtol=1e-5)
            for mine, ref in zip(bn.blobs, ref_bn.blobs, strict=True):  # running statistics
                np.testing.assert_allclose(mine.data, ref.data, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(net.blobs["y"].data, whole.blobs["y"].data[rank::world],
                                       rtol=1e-5, atol=1e-5)
            want = whole.blobs["x"].diff[rank::world]
            assert np.abs(want).max() > 1e-3  # backward did run through BatchNorm
            # Each rank's loss is normalised by its own batch (as in Caffe: the all-reduce
            # averages), so its data gradients are world × the whole batch's.
            _close(net.blobs["x"].diff / world, want)
        # The averaged gradients of the ranks (what the all-reduce gives) are the whole's.
        for k, ref in enumerate(whole.learnable_params):
            mean = sum(net.learnable_params[k].blob.diff for net in nets) / world
            _close(mean, ref.blob.diff)
            # A plain SGD step with those gradients, on every rank and on the whole.
            ref.blob.data[...] -= 0.01 * ref.blob.diff
            for net in nets:
                net.learnable_params[k].blob.data[...] -= 0.01 * mean
    for net in nets:  # the trained weights
        for mine, ref in zip(net.learnable_params, whole.learnable_params, strict=True):
            _close(mine.blob.data, ref.blob.data)
    assert ranks.calls == 3 * 3  # per iteration: Σx, Σ(x - mean)², backward's pair of sums


def test_unsynchronised_batchnorm_keeps_each_ranks_own_statistics():
    """Caffe's default: each rank normalises with its own records' statistics."""
    world, rows = 2, 6
    x = np.random.default_rng(2).normal(size=(rows * world, 3, 4, 4)).astype(np.float32)
    x[1::2] += 5  # rank 1's records lie elsewhere
    for rank in range(world):
        net = _net(rows)
        net.blobs["x"].data[...] = x[rank::world]
        net.forward()
        own = x[rank::world].transpose(1, 0, 2, 3).reshape(3, -1)
        np.testing.assert_allclose(net.layer_dict["bn"].mean, own.mean(axis=1), rtol=1e-5)
        np.testing.assert_allclose(net.layer_dict["bn"].var, own.var(axis=1), rtol=1e-4)

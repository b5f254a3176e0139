"""NcclReducer (GPU all-reduce through CuPy's NCCL bindings) driven with a fake ``cupy`` and
``cupy.cuda.nccl``: no GPU here. What is checked: the NCCL id goes from rank 0 through MPI,
each bucket becomes one in-place allReduce of the right address, count and type on the
reducer's stream, ordered after the compute stream (when each starts during backward is
GradientBuckets' logic, tested in test_collectives.py); the averaged gradients equal one
process's; a reduction that never finishes aborts NCCL and stops with RankFailure.
Unverified on a real GPU."""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import DeviceError
from netforge.net import Net
from netforge.train.parallel import collectives
from tests.train.parallel.helpers import data_net


class FakeEvent:
    def __init__(self, done=True):
        self.done = done


class FakeStream:
    count = 0

    def __init__(self, non_blocking=False):
        FakeStream.count += 1
        self.ptr = 1000 + FakeStream.count
        self.waited: list = []
        self.next_done = True

    def wait_event(self, event):
        self.waited.append(event)

    def record(self):
        return FakeEvent(self.next_done)


class FakeCommunicator:
    """Plays 2 ranks holding the same gradient: allReduce doubles the buffer at ``ptr``."""

    def __init__(self, world, uid, rank, log):
        self.world, self.uid, self.rank, self.log = world, uid, rank, log
        self.aborted = False

    def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802 (NCCL's name)
        assert send == recv and dtype == "f32" and op == "sum"
        values = np.ctypeslib.as_array((ctypes.c_float * count).from_address(recv))
        values *= 2
        self.log.append(("allReduce", recv, count, stream))

    def bcast(self, buffer, count, dtype, root, stream):
        self.log.append(("bcast", buffer, count, root, stream))

    def abort(self):
        self.aborted = True


def fake_cupy(monkeypatch, log):
    compute = FakeStream()
    nccl = types.SimpleNamespace(
        NCCL_FLOAT32="f32", NCCL_FLOAT64="f64", NCCL_FLOAT16="f16", NCCL_SUM="sum",
        get_unique_id=lambda: "the-id",
        NcclCommunicator=lambda world, uid, rank: FakeCommunicator(world, uid, rank, log))

    class Device:
        def __init__(self, index):
            log.append(("device", index))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl = nccl
    cuda.Device = Device
    cuda.Stream = FakeStream
    cuda.get_current_stream = lambda: compute
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    return compute


class FakeMpi:
    """What NcclReducer asks of MpiComm: rank, world, timeout and the mpi4py comm's bcast."""

    rank, world, timeout = 0, 2, 0.2

    def __init__(self, log):
        self.comm = types.SimpleNamespace(
            bcast=lambda value, root: log.append(("mpi bcast", value, root)) or value)


def test_nccl_buckets_reduce_in_place_as_backward_finishes(lmdb_db, monkeypatch):
    log: list = []
    compute = fake_cupy(monkeypatch, log)
    reducer = collectives.NcclReducer(FakeMpi(log), device_id=1)
    assert log[:2] == [("mpi bcast", "the-id", 0), ("device", 1)]
    assert reducer.nccl_comm.uid == "the-id" and reducer.nccl_comm.world == 2
    param = config.parse_text(data_net(lmdb_db, 8), pb.NetParameter())
    net, reference = Net(param, "train", seed=3), Net(param, "train", seed=3)
    buckets = collectives.GradientBuckets(net, reducer, bucket_bytes=64)
    net.clear_param_diffs()
    net.forward_range(0, len(net.layers) - 1)
    buckets.reduce_during_backward(net)
    reference.clear_param_diffs()
    reference.forward_backward()
    calls = [entry for entry in log if entry[0] == "allReduce"]
    base = buckets.flat.ctypes.data
    # One call per bucket, in bucket order, on the reducer's own stream, each after the
    # compute stream's work so far (one wait per call).
    assert [(ptr - base) // 4 for _, ptr, _, _ in calls] == [b[0] for b in buckets.buckets]
    assert [count for _, _, count, _ in calls] == [b[1] - b[0] for b in buckets.buckets]
    assert {stream for *_, stream in calls} == {reducer.stream.ptr} != {compute.ptr}
    assert len(reducer.stream.waited) == len(calls) > 1
    for mine, theirs in zip(net.learnable_params, reference.learnable_params, strict=True):
        np.testing.assert_allclose(mine.blob.diff, theirs.blob.diff, rtol=1e-6)
    reducer.broadcast(buckets.flat[:5], "the parameters")
    assert log[-1] == ("bcast", base, 5, 0, reducer.stream.ptr)


def test_a_reduction_that_never_finishes_aborts_nccl(monkeypatch):
    log: list = []
    fake_cupy(monkeypatch, log)
    reducer = collectives.NcclReducer(FakeMpi(log), device_id=0)
    reducer.stream.next_done = False  # a peer died: the event never completes
    buffer = np.ones(4, np.float32)
    event = reducer.start_allreduce(buffer)
    np.testing.assert_array_equal(buffer, 2)
    with pytest.raises(collectives.RankFailure, match="NCCL the gradients did not finish"):
        reducer.wait([event], "the gradients")
    assert reducer.nccl_comm.aborted


def test_without_cupy_the_reducer_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(DeviceError, match="multi-GPU training needs CuPy"):
        collectives.NcclReducer(FakeMpi([]), device_id=0)

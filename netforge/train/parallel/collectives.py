"""Moving gradients between ranks: MPI (mpi4py) on CPU, NCCL (CuPy) on GPU.

Nothing here is a transport of its own: every byte goes through MPI or NCCL. What this module
adds is the discipline around them:

* ``MpiComm`` — the job's communicator with deadlines. Every wait polls its requests and gives
  up after ``timeout`` seconds with ``RankFailure`` (one line naming the wait), so a rank that
  died or hangs never hangs the others. While rank 0 alone works (testing, snapshotting) it
  sends ``keepalive`` messages, which push the waiting ranks' deadlines back.
* ``GradientBuckets`` — all learnable parameters' diffs re-pointed into ONE flat buffer,
  ordered as backward finishes them (last layer first) and cut into buckets; each bucket's
  non-blocking all-reduce (``Iallreduce``) starts as soon as backward has finished every
  layer whose parameters lie in it, so communication overlaps the rest of backward.
* ``NcclReducer`` — the same buckets reduced by NCCL on the GPU stream (ChainerMN's
  ``pure_nccl`` design: MPI only hands out the NCCL id). Import-guarded; see README.

Averages, not sums: each rank's loss is normalised by its own batch, so the mean of the N
ranks' gradients is the gradient of the N×batch loss (Caffe scales by 1/solver_count too).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from netforge.errors import DeviceError, NetforgeError

KEEPALIVE_TAG = 7301
DEFAULT_TIMEOUT_S = 45.0
DEFAULT_BUCKET_BYTES = 1 << 20


class RankFailure(NetforgeError):
    """Another rank died or stopped answering; this rank stops too."""

    exit_code = 1


def import_mpi():
    """mpi4py's MPI module, or a DeviceError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DeviceError("data-parallel training on CPU needs mpi4py and an MPI library; "
                          "install the MPI extra: pip install 'netforge[mpi]'") from exc
    return MPI


class MpiComm:
    """COMM_WORLD (duplicated, errors returned as exceptions) with deadline-bound waits."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S):
        mpi = import_mpi()
        self.MPI = mpi
        # Errors as exceptions, on the world too: MPICH otherwise aborts the job from inside
        # a wait when it notices a dead peer, before this rank can say what happened.
        mpi.COMM_WORLD.Set_errhandler(mpi.ERRORS_RETURN)
        self.comm = mpi.COMM_WORLD.Dup()
        self.comm.Set_errhandler(mpi.ERRORS_RETURN)
        self.rank = self.comm.Get_rank()
        self.world = self.comm.Get_size()
        self.timeout = float(timeout)
        self.wait_seconds = 0.0  # time spent blocked in waits (the benchmark reports it)
        self._keepalive_sent = 0.0
        self._keepalive_requests: list = []
        self._keepalive_buffer = np.zeros(1, dtype=np.int32)

    # -- waiting with a deadline ------------------------------------------------------------
    def wait(self, requests: list, what: str) -> None:
        """Complete ``requests`` or raise RankFailure after ``timeout`` s without progress
        (a keepalive from rank 0 counts as progress)."""
        began = time.perf_counter()
        deadline = began + self.timeout
        pause = 0.0
        try:
            while not self.MPI.Request.Testall(requests):
                now = time.perf_counter()
                if self.drain_keepalives():
                    deadline = now + self.timeout
                if now > deadline:
                    raise RankFailure(
                        f"rank {self.rank}: no answer from the other ranks for "
                        f"{self.timeout:g} s while waiting for {what} (a rank died or hangs); "
                        "stopping all ranks")
                # Sleep a little between polls: a spinning wait would take the CPU the
                # other ranks on this machine are computing with.
                pause = min(pause + 2e-5, 1e-3)
                time.sleep(pause)
        except self.MPI.Exception as exc:
            raise RankFailure(f"rank {self.rank}: another rank of the job failed (MPI: "
                              f"{exc.Get_error_string().strip()}, while waiting for {what}); "
                              "stopping") from None
        finally:
            self.wait_seconds += time.perf_counter() - began

    def progress(self, requests: list) -> None:
        """Let MPI move started operations along (MPICH progresses only inside MPI calls)."""
        if requests:
            self.MPI.Request.Testall(requests)

    def keepalive(self) -> None:
        """Rank 0, busy alone: tell the waiting ranks it is alive (at most once a second)."""
        if self.rank != 0 or self.world == 1:
            return
        now = time.perf_counter()
        if now - self._keepalive_sent < 1.0:
            return
        self._keepalive_sent = now
        self._keepalive_requests = [r for r in self._keepalive_requests if not r.Test()]
        for other in range(1, self.world):
            self._keepalive_requests.append(
                self.comm.Isend(self._keepalive_buffer, dest=other, tag=KEEPALIVE_TAG))

    def drain_keepalives(self) -> bool:
        """Receive the keepalives that arrived; whether there were any."""
        seen = False
        while self.comm.Iprobe(source=0, tag=KEEPALIVE_TAG):
            self.comm.Recv(np.empty(1, dtype=np.int32), source=0, tag=KEEPALIVE_TAG)
            seen = True
        return seen

    # -- collectives ------------------------------------------------------------------------
    def start_allreduce(self, buffer: np.ndarray):
        """Sum ``buffer`` over the ranks, in place, without blocking; returns the request."""
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def allreduce_max(self, values: np.ndarray, what: str) -> np.ndarray:
        out = np.empty_like(values)
        self.wait([self.comm.Iallreduce(values, out, op=self.MPI.MAX)], what)
        return out

    def broadcast(self, buffer: np.ndarray, what: str) -> None:
        self.wait([self.comm.Ibcast(buffer, root=0)], what)

    def broadcast_int(self, value: int, what: str) -> int:
        box = np.array([value], dtype=np.int64)
        self.broadcast(box, what)
        return int(box[0])

    def abort(self, code: int) -> None:
        """End every rank of the job (MPI_Abort), quietly: the reason is already printed."""
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # MPICH prints its own "application called MPI_Abort" line
        self.comm.Abort(code)


class GradientBuckets:
    """The train net's parameter diffs as one flat buffer, cut into readiness-ordered buckets.

    ``reduce_during_backward(net)`` runs backward layer by layer (as ``Net.backward`` does)
    and starts each bucket's all-reduce as soon as its last parameter's gradient is complete;
    it returns once all buckets are reduced and averaged.
    """

    def __init__(self, net, comm, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.net = net
        self.comm = comm
        self.world = comm.world
        steps = net.plan.steps
        learnable = net.plan.learnable
        xp = net.ctx.xp
        # A parameter's gradient is complete once backward has passed the FIRST step that
        # uses it (shared parameters accumulate over several layers).
        first_use = {}
        for index, step in enumerate(steps):
            for blob in getattr(step.layer, "blobs", []) or []:
                first_use.setdefault(id(blob.diff), index)
        order = sorted(range(len(learnable)),
                       key=lambda k: -first_use.get(id(learnable[k].blob.diff), 0))
        dtype = learnable[0].blob.diff.dtype if learnable else np.float32
        total = sum(learnable[k].blob.count for k in order)
        self.flat = xp.zeros(max(total, 1), dtype=dtype)
        self.buckets: list[tuple[int, int, int]] = []  # (start, stop, ready after step)
        offset, bucket_start, bucket_ready = 0, 0, None
        limit = max(int(bucket_bytes) // dtype.itemsize, 1)
        for k in order:
            p = learnable[k]
            ready = first_use.get(id(p.blob.diff), 0)
            self._repoint(steps, p.blob, self.flat[offset:offset + p.blob.count])
            offset += p.blob.count
            bucket_ready = ready
            if offset - bucket_start >= limit:
                self.buckets.append((bucket_start, offset, bucket_ready))
                bucket_start = offset
        if offset > bucket_start:
            self.buckets.append((bucket_start, offset, bucket_ready))

    @staticmethod
    def _repoint(steps, owner, view) -> None:
        """Make ``view`` the diff of ``owner`` and of every blob sharing its diff."""
        old = owner.diff
        view[...] = old.reshape(-1)
        shaped = view.reshape(old.shape)
        for step in steps:
            for blob in getattr(step.layer, "blobs", []) or []:
                if blob.diff is old:
                    blob.diff = shaped
        owner.diff = shaped

    def reduce_during_backward(self, net) -> None:
        steps = net.plan.steps
        for top, weight in net.plan.loss_tops:
            top.diff.fill(weight)
        pending = list(reversed(self.buckets))  # the first bucket is ready first
        started: list = []
        for index in range(len(steps) - 1, -1, -1):
            step = steps[index]
            if step.need_backward:
                step.layer.backward(step.tops, step.propagate_down, step.bottoms)
            while pending and pending[-1][2] >= index:
                start, stop, _ = pending.pop()
                started.append(self.start(start, stop))
            self.comm.progress(started)
        for start, stop, _ in reversed(pending):  # parameters no step reached (unused)
            started.append(self.start(start, stop))
        self.comm.wait(started, "the gradient all-reduce")
        self.flat *= 1.0 / self.world

    def start(self, start: int, stop: int):
        return self.comm.start_allreduce(self.flat[start:stop])


def device_pointer(array) -> int:
    """The address of an array's first element: CuPy's ``data.ptr``, or a host array's
    ``ctypes.data`` (the tests drive NcclReducer with numpy buffers and a fake nccl)."""
    pointer = getattr(getattr(array, "data", None), "ptr", None)
    return int(pointer) if pointer is not None else int(array.ctypes.data)


class NcclReducer:
    """GPU all-reduce of the same flat buffer through NCCL (CuPy's bindings), one call per
    bucket on a stream of its own that first waits for the compute stream's work so far; so
    bucket k is reduced while backward's kernels for the layers below it run. MPI hands the
    NCCL unique id from rank 0 to the others.

    Not run on a GPU yet: tests/train/parallel/test_nccl.py drives it with a fake nccl module
    (the bucket sequence, pointers, counts, streams, the timeout); the README says so.
    """

    def __init__(self, comm: MpiComm, device_id: int):
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as exc:
            raise DeviceError("multi-GPU training needs CuPy with NCCL "
                              "(pip install 'netforge[gpu]' nvidia-nccl-cu12)") from exc
        self.cupy, self.nccl = cupy, nccl
        self.comm = comm
        self.world = comm.world
        self.rank = comm.rank
        self.wait_seconds = 0.0
        uid = nccl.get_unique_id() if comm.rank == 0 else None
        uid = comm.comm.bcast(uid, root=0)
        with cupy.cuda.Device(device_id):
            self.nccl_comm = nccl.NcclCommunicator(comm.world, uid, comm.rank)
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self.timeout = comm.timeout

    def _dtype(self, array):
        return {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                np.dtype(np.float64): self.nccl.NCCL_FLOAT64,
                np.dtype(np.float16): self.nccl.NCCL_FLOAT16}[np.dtype(array.dtype)]

    def _after_compute(self) -> None:
        """Order the NCCL stream after everything queued on the compute stream so far."""
        self.stream.wait_event(self.cupy.cuda.get_current_stream().record())

    def start_allreduce(self, buffer):
        self._after_compute()
        pointer = device_pointer(buffer)
        self.nccl_comm.allReduce(pointer, pointer, buffer.size, self._dtype(buffer),
                                 self.nccl.NCCL_SUM, self.stream.ptr)
        return self.stream.record()

    def progress(self, requests) -> None:
        pass

    def wait(self, events, what: str) -> None:
        """Wait for the reduction's events, aborting NCCL after ``timeout`` s (a dead peer
        otherwise blocks NCCL forever)."""
        began = time.perf_counter()
        for event in events:
            while not event.done:
                if time.perf_counter() - began > self.timeout:
                    self.nccl_comm.abort()
                    raise RankFailure(f"rank {self.rank}: NCCL {what} did not finish within "
                                      f"{self.timeout:g} s (a rank died or hangs); stopping")
                time.sleep(1e-4)
        self.wait_seconds += time.perf_counter() - began

    def broadcast(self, buffer, what: str) -> None:
        self._after_compute()
        self.nccl_comm.bcast(device_pointer(buffer), buffer.size, self._dtype(buffer), 0,
                             self.stream.ptr)
        self.wait([self.stream.record()], what)

"""Plugging data-parallel training into the Solver (Caffe's semantics, several processes).

    job = DataParallel.from_environment()            # rank/world from mpirun/srun/torchrun
    solver = Solver("solver.prototxt", parallel=job, metrics=job.is_root)
    solver.solve(resume_file)                        # on every rank
    job.finish()                                     # all ranks end together

What the Solver asks of it (its ``parallel`` hooks), and what each rank then does:

* ``common_seed`` — one random seed for all ranks (rank 0's), so that every rank's data layers
  walk the same stream and draw the same crops/mirrors for the same records.
* ``attach`` — shard the train net's data layers (rank r reads records r, r+N, ... of each
  global batch of N × batch_size), put the gradients into one flat buffer, and broadcast the
  parameters from rank 0.
* ``forward_backward`` — the last iter_size pass: backward with the bucketed all-reduce.
* ``agree`` — after every iteration the ranks exchange their signal requests (SIGINT/SIGHUP
  on any rank), so all stop or snapshot at the same iteration; also the ranks' heartbeat.
* ``is_root`` — rank 0 alone logs, tests and snapshots.

BatchNorm keeps per-rank batch statistics, as Caffe does, unless synchronised (the option
``sync_batchnorm`` for every BatchNorm layer, or ``batch_norm_param.sync_statistics`` for
one): then it normalises with the global batch's statistics, summed over the ranks through
``sum_in_place``, and N ranks compute what one process with the N-times batch computes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import numpy as np

from netforge.errors import ConfigError
from netforge.train.parallel import collectives
from netforge.train.parallel.launch import RankInfo, rank_info

log = logging.getLogger("netforge")

_REQUESTS = ("none", "snapshot", "stop")


class DataParallel:
    """One rank's view of the job: its communicator, buckets and options.

    Args:
        comm: an ``MpiComm`` (or anything with its methods).
        sync_batchnorm: every BatchNorm layer normalises with the statistics of the global
            batch (Caffe keeps them per rank, and snapshots rank 0's running statistics).
        bucket_bytes: all-reduce bucket size.
        device_id: the GPU this rank drives (NCCL then reduces the gradients), or None.
    """

    def __init__(self, comm, *, sync_batchnorm: bool = False,
                 bucket_bytes: int = collectives.DEFAULT_BUCKET_BYTES,
                 device_id: int | None = None):
        self.comm = comm
        self.rank = comm.rank
        self.world = comm.world
        self.sync_batchnorm = sync_batchnorm
        self.bucket_bytes = bucket_bytes
        self.device_id = device_id
        self.buckets: collectives.GradientBuckets | None = None
        self.reducer = comm

    @classmethod
    def from_environment(cls, info: RankInfo | None = None, env=None, **options):
        """The job this process belongs to; None when it was started as a single process.

        Options not given come from NETFORGE_RANK_TIMEOUT (seconds), NETFORGE_BUCKET_KB and
        NETFORGE_SYNC_BATCHNORM=1.
        """
        env = os.environ if env is None else env
        info = info or rank_info(env)
        if info.world == 1:
            return None
        timeout = float(env.get("NETFORGE_RANK_TIMEOUT", collectives.DEFAULT_TIMEOUT_S))
        comm = collectives.MpiComm(timeout)
        if comm.world != info.world:
            raise ConfigError(
                f"the {info.source} variables say {info.world} ranks but MPI joined "
                f"{comm.world}: start "
                "netforge under mpirun/mpiexec or srun (torchrun starts no MPI job; on GPUs "
                "use netforge train --gpu)")
        options.setdefault("bucket_bytes",
                           int(env.get("NETFORGE_BUCKET_KB", collectives.DEFAULT_BUCKET_BYTES
                                       // 1024)) * 1024)
        options.setdefault("sync_batchnorm", env.get("NETFORGE_SYNC_BATCHNORM") == "1")
        return cls(comm, **options)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- the Solver's hooks -----------------------------------------------------------------
    def common_seed(self, seed: int | None) -> int:
        """Rank 0's seed (drawn when the solver sets none) for every rank."""
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
        return self.comm.broadcast_int(int(seed), "the random seed")

    def attach(self, solver) -> None:
        net = solver.net
        for layer in net.layers:
            shard = getattr(layer, "shard", None)
            if shard is not None:
                shard(self.rank, self.world)
        if self.device_id is not None:
            self.reducer = collectives.NcclReducer(self.comm, self.device_id)
        self.buckets = collectives.GradientBuckets(net, self.reducer, self.bucket_bytes)
        synced = 0
        for layer in net.layers:
            if layer.type == "BatchNorm" and (self.sync_batchnorm or layer.sync_requested):
                layer.synchronise(self)
                synced += 1
        self.broadcast_parameters(net)
        if self.is_root:
            log.info("Data-parallel: %d ranks, effective batch = %d × the net's batch; "
                     "%d gradient values in %d buckets", self.world, self.world,
                     self.buckets.flat.size, len(self.buckets.buckets))
            if synced:
                log.info("Data-parallel: %d BatchNorm layers use the global batch's "
                         "statistics", synced)

    def sum_in_place(self, array) -> None:
        """Sum a small array (BatchNorm's channel sums) over the ranks, in place, now."""
        self.reducer.wait([self.reducer.start_allreduce(array)], "the BatchNorm statistics")

    def broadcast_parameters(self, net) -> None:
        """Every rank starts from rank 0's weights (and BatchNorm statistics)."""
        for blobs in net.params.values():
            for blob in blobs:
                self.reducer.broadcast(blob.data, "the parameters from rank 0")

    def forward_backward(self, net) -> None:
        """Forward, then backward with the bucketed all-reduce; the loss stays on the device
        (the solver adds ``net.loss_array()``): nothing is read back."""
        net.run_forward(0, len(net.plan.steps) - 1)
        self.buckets.reduce_during_backward(net)

    def agree(self, request: str) -> str:
        """Combine the ranks' requests: any "stop" stops all, any "snapshot" snapshots."""
        mine = np.zeros(2, dtype=np.int32)
        mine[0] = request == "stop"
        mine[1] = request == "snapshot"
        joint = self.comm.allreduce_max(mine, "the other ranks to finish the iteration")
        if joint[0]:
            return "stop"
        return "snapshot" if joint[1] else "none"

    def keepalive(self) -> None:
        self.comm.keepalive()

    def finish(self) -> None:
        """End the run together: no rank exits (and finalizes MPI) while rank 0 still tests
        or snapshots; afterwards a launcher's failure notice is moot."""
        self.comm.allreduce_max(np.zeros(1, dtype=np.int32), "the other ranks to finish")
        self.comm.drain_keepalives()  # none left unreceived when MPI finalizes
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    @property
    def allreduce_seconds(self) -> float:
        return self.reducer.wait_seconds


def install_failure_notice(rank: int) -> None:
    """MPICH's launcher (with -disable-auto-cleanup, as ``netforge train --gpu`` starts it)
    sends SIGUSR1 to the surviving ranks when one fails: say so in one line and exit 1."""

    def failed(signum, frame):
        sys.stderr.write(f"netforge: error: rank {rank}: another rank of the job failed "
                         "(the MPI launcher reported it); stopping\n")
        sys.stderr.flush()
        os._exit(1)

    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, failed)


def quiet_other_ranks(rank: int) -> None:
    """Rank 0 alone logs; the others say only warnings and errors."""
    if rank != 0:
        logging.getLogger("netforge").setLevel(logging.WARNING)

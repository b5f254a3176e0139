"""One rank of the data-parallel equivalence test (run under mpiexec by test_driver.py).

    mpiexec -n 2 python -m tests.train.parallel.worker OUT_DIR DB RULE BATCH

Trains the net with Dropout (helpers.data_net) 50 iterations straight, and 25 + snapshot +
resume in a new solver + 25; rank 0 saves both runs' weights to OUT_DIR/straight.npz and
OUT_DIR/resumed.npz.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from netforge.train.parallel.driver import DataParallel
from tests.train.parallel.helpers import make_solver


def main(out_dir: str, db: str, rule: str, global_batch: str) -> None:
    out = Path(out_dir)
    job = DataParallel.from_environment(bucket_bytes=512)  # several buckets even here
    world = job.world if job else 1
    batch = int(global_batch) // world

    def weights(solver):
        return [np.array(p.blob.data) for p in solver.net.learnable_params]

    straight = make_solver(out / "straight", db, rule, batch, parallel=job, dropout=True)
    straight.step(50)
    final = weights(straight)
    straight.close()
    first = make_solver(out / "first", db, rule, batch, parallel=job, dropout=True)
    first.step(25)
    first.snapshot()
    first.close()
    state = out / "first" / "snap_iter_25.solverstate"  # rank 0 wrote it; all ranks read it
    job.comm.broadcast(np.zeros(1), "rank 0's snapshot")  # wait until it is there
    resumed = make_solver(out / "resumed", db, rule, batch, parallel=job, dropout=True)
    resumed.restore(state)
    resumed.step(25)
    if job.is_root:
        np.savez(out / "straight.npz", *final)
        np.savez(out / "resumed.npz", *weights(resumed))
    resumed.close()


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Data-parallel speed on this machine: images/s of LeNet and CIFAR-10 quick training.

    .venv/bin/python tools/bench/parallel.py [--nets lenet,cifar10_quick] [--iters 30]
        [--warmup 5] [--records 2048] [--json FILE]

Rows, for each net, each run in its own process(es) over the same synthetic LMDB (random
images of the net's shape, written once to a temporary folder), with the net's own Data layer
(so reading and transforming records is part of the time, as in real training):

  1 rank × 1 thread     python, NETFORGE_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1
  1 rank × 2 threads    python, NETFORGE_NUM_THREADS=2 (netforge's batch split over 2 threads)
  2 ranks × 1 thread    mpiexec -n 2 (the [mpi] extra's MPICH), each rank 1 thread

Every rank trains the prototxt's batch (Caffe's semantics: 2 ranks = twice the effective
batch), so images/s = ranks × batch × iterations / wall time of the timed iterations.
"speed-up" is against 1 rank × 1 thread of the same net in the same session, and
"efficiency" = speed-up / ranks. For the 2-rank row, "all-reduce ms/step" is the time a rank
spent blocked waiting for the gradient all-reduce per step (what overlapping did not hide:
transfer plus waiting for the slower rank), and "pure ms" the time of one all-reduce of the
same flat buffer with no compute around it (the transfer alone).

The machine is shared (the load average is printed before each row): figures are noisy and
only ratios within one run are worth quoting. PyTorch has no MPI-free CPU DDP to compare
with here (its gloo backend would be the peer); this bench compares netforge with itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

NETS = {"lenet": ("configs/lenet_train_test.prototxt", (1, 28, 28)),
        "cifar10_quick": ("configs/cifar10_quick_train_test.prototxt", (3, 32, 32))}


def make_lmdb(folder: Path, shape, records: int) -> Path:
    import numpy as np

    from netforge.data.records import array_to_datum
    from netforge.data.stores import LmdbWriter

    rng = np.random.default_rng(0)
    with LmdbWriter(folder) as writer:
        for i in range(records):
            image = rng.integers(0, 256, size=shape, dtype=np.uint8)
            writer.put(f"{i:08d}".encode(), array_to_datum(image, int(i % 10))
                       .SerializeToString())
    return folder


def solver_param(net: str, db: Path):
    """The net's TRAIN phase over ``db`` (no mean file, no test net), SGD as the solver."""
    from netforge import config
    from netforge import netforge_pb2 as pb

    param = config.load_net_param(ROOT / NETS[net][0])
    kept = pb.NetParameter(name=param.name)
    for layer in param.layer:
        if any(rule.phase == pb.TEST for rule in layer.include):
            continue
        new = kept.layer.add()
        new.CopyFrom(layer)
        if new.type == "Data":
            new.data_param.source = str(db)
            new.transform_param.ClearField("mean_file")
            new.transform_param.scale = 1 / 256
        del new.include[:]
    sp = pb.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=5e-4, lr_policy="fixed",
                            max_iter=10**9, random_seed=1, type="SGD")
    sp.train_net_param.CopyFrom(kept)
    return sp


def worker(net: str, db: str, iters: int, warmup: int, out: str) -> None:
    """One rank (or the single process): train, time, report as JSON (rank 0)."""
    import numpy as np

    from netforge.train.parallel.driver import DataParallel, quiet_other_ranks
    from netforge.train.solver import Solver

    job = DataParallel.from_environment()
    world = job.world if job else 1
    if job:
        quiet_other_ranks(job.rank)
    import logging

    logging.getLogger("netforge").setLevel(logging.WARNING)
    solver = Solver(solver_param(net, Path(db)), parallel=job, metrics=False)
    batch = solver.net.blobs["data"].shape[0]
    solver.step(warmup)

    def together():
        if job:
            job.agree("none")

    together()
    waited = job.allreduce_seconds if job else 0.0
    began = time.perf_counter()
    solver.step(iters)
    together()
    wall = time.perf_counter() - began
    waited = (job.allreduce_seconds - waited) if job else 0.0
    pure = 0.0
    if job:  # the transfer alone: the same flat buffer, nothing else running
        flat = job.buckets.flat
        rounds = 20
        t = time.perf_counter()
        for _ in range(rounds):
            job.comm.wait([job.comm.start_allreduce(flat)], "the timing all-reduce")
        pure = (time.perf_counter() - t) / rounds
        flat[...] = np.zeros_like(flat)
    if not job or job.is_root:
        Path(out).write_text(json.dumps({
            "images_per_s": world * batch * iters / wall, "ms_per_step": 1000 * wall / iters,
            "allreduce_ms_per_step": 1000 * waited / iters, "pure_allreduce_ms": 1000 * pure,
            "batch": batch, "ranks": world, "gradient_values": int(
                sum(p.blob.count for p in solver.net.learnable_params))}))
    solver.close()


def run_row(net, db, ranks, threads, args, scratch: Path) -> dict:
    out = scratch / f"{net}_{ranks}_{threads}.json"
    env = {**os.environ, "NETFORGE_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(name, None)
    command = [sys.executable, __file__, "--worker", net, str(db), str(args.iters),
               str(args.warmup), str(out)]
    if ranks > 1:
        command = [str(Path(sys.executable).with_name("mpiexec")), "-n", str(ranks), *command]
    subprocess.run(command, check=True, env=env)
    return json.loads(out.read_text())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        net, db, iters, warmup, out = sys.argv[2:7]
        worker(net, db, int(iters), int(warmup), out)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default="lenet,cifar10_quick")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--records", type=int, default=2048)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="netforge-parallel-bench-") as tmp:
        scratch = Path(tmp)
        print(f"{'net':14} {'config':20} {'img/s':>8} {'ms/step':>8} {'speed-up':>8} "
              f"{'effic.':>6} {'allred ms/step':>14} {'pure ms':>8} {'load':>5}")
        for net in args.nets.split(","):
            db = make_lmdb(scratch / f"{net}_db", NETS[net][1], args.records)
            base = None
            for ranks, threads in ((1, 1), (1, 2), (2, 1)):
                load = os.getloadavg()[0]
                row = run_row(net, db, ranks, threads, args, scratch)
                base = base or row["images_per_s"]
                speedup = row["images_per_s"] / base
                row.update(net=net, threads=threads, speedup=speedup, load=load,
                           efficiency=speedup / ranks)
                rows.append(row)
                label = (f"{ranks} rank{'s' if ranks > 1 else ''} × {threads} "
                         f"thread{'s' if threads > 1 else ''}")
                allreduce = f"{row['allreduce_ms_per_step']:.2f}" if ranks > 1 else "-"
                pure = f"{row['pure_allreduce_ms']:.2f}" if ranks > 1 else "-"
                print(f"{net:14} {label:20} {row['images_per_s']:8.0f} "
                      f"{row['ms_per_step']:8.1f} {speedup:7.2f}× {row['efficiency']:6.2f} "
                      f"{allreduce:>14} {pure:>8} {load:5.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

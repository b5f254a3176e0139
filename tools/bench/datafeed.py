"""Does reading data slow training down? LeNet steps fed by an LMDB Data layer vs DummyData.

Builds a 32×32 MNIST LMDB from the bundled sample (as the demo does), then times LeNet's
TRAIN step (forward + backward + SGD update; configs/lenet_train_test.prototxt's layers, batch
64, random 28×28 crop, scale 1/256) three ways in ONE process, interleaved round by round:

- ``dummy``: the Data layer replaced by DummyData of the same shapes, constant fillers (no
  per-step work at all);
- ``data/<mode>``: the real Data layer, for each ``--modes`` entry (``thread``: decode in the
  prefetch thread; ``process``: decode in worker processes into shared memory; ``auto``: the
  default choice for this machine);
- ``data/control``: a second DummyData net, timed like the Data rows: its "overhead" shows
  how far apart two identical contenders land in this run (the noise floor);
- ``torch``: PyTorch's step on in-memory tensors (the same net), when torch is installed.

Each round times every contender (in an order rotated round by round) for about ``--seconds``
after a short pause and warm-up, and scores its median step. The table gives the median over
``--rounds`` rounds; the overhead of each Data row over ``dummy`` and the ratio to torch are
the median of the per-round ratios, so that load from other processes, shared by contenders
timed a moment apart, cancels. The machine may be shared: the load average is printed, and
only ratios from one run mean anything.

    .venv/bin/python tools/bench/datafeed.py [--rounds 20] [--seconds 0.4] [--threads 2]
        [--modes thread,process,auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def write_mnist_lmdb(dest: Path) -> int:
    """The bundled MNIST sample as a raw LMDB of 1×32×32 digits (28×28 centred in 32×32)."""
    import numpy as np
    from mnist_to_folders import DEFAULT_CSV, read_mnist_csv

    from netforge.data.records import array_to_datum
    from netforge.data.stores import LmdbWriter

    images, labels = read_mnist_csv(DEFAULT_CSV)
    order = np.random.default_rng(0).permutation(len(images))  # the sample is sorted by digit
    images, labels = images[order], labels[order]
    with LmdbWriter(dest) as writer:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            padded = np.zeros((1, 32, 32), np.uint8)
            padded[0, 2:30, 2:30] = image
            writer.put(f"{i:08d}", array_to_datum(padded, int(label)).SerializeToString())
    return len(images)


def lenet_solver(source: Path | None, workers: str | None):
    """LeNet's TRAIN net fed by the LMDB at ``source``, or by DummyData when None."""
    from netforge import config
    from netforge import netforge_pb2 as pb
    from netforge.train.solver import Solver

    full = config.load_net_param(ROOT / "configs" / "lenet_train_test.prototxt")
    net = pb.NetParameter(name="LeNet")
    if source is None:
        dummy = net.layer.add(name="data", type="DummyData")
        dummy.top.extend(["data", "label"])
        dummy.dummy_data_param.shape.add().dim.extend([64, 1, 28, 28])
        dummy.dummy_data_param.shape.add().dim.extend([64])
        # Constant fillers fill once: the baseline does no per-step work at all.
        for value in (0.3, 1.0):
            dummy.dummy_data_param.data_filler.add(type="constant", value=value)
    else:
        data = net.layer.add(name="mnist", type="Data")
        data.top.extend(["data", "label"])
        data.transform_param.scale = 0.00390625
        data.transform_param.crop_size = 28
        data.data_param.source = str(source)
        data.data_param.batch_size = 64
        data.data_param.backend = pb.DataParameter.LMDB
        if workers is not None:
            os.environ["NETFORGE_DATA_PROCESSES"] = workers
    for layer in full.layer:
        if layer.type in ("Data", "Accuracy"):
            continue
        net.layer.add().CopyFrom(layer)
    sp = pb.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="inv",
                            gamma=1e-4, power=0.75, max_iter=10**9, random_seed=1)
    sp.train_net_param.CopyFrom(net)
    solver = Solver(sp)
    os.environ.pop("NETFORGE_DATA_PROCESSES", None)
    return solver


def torch_step():
    import numpy as np
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((64, 1, 28, 28), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 64))

    def step():
        opt.zero_grad(set_to_none=False)
        criterion(model(x), y).backward()
        opt.step()

    return step


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def data_layer_costs(solver, batches: int) -> tuple[float, float]:
    """(ms the training thread spends in the Data layer's forward, CPU ms of decoding per
    batch) with batches ready: a pause before each forward lets the prefetcher refill.
    Both are CPU-time figures, little changed by other processes taking turns on the cores."""
    layer = solver.net.layer_dict["mnist"]
    tops = [solver.net.blobs[name] for name in layer.param.top]
    layer.forward([], tops)  # starts the prefetcher
    time.sleep(0.5)
    workers = getattr(layer._prefetcher, "worker_pids", [])
    worker_start = sum(process_cpu_seconds(pid) for pid in workers)
    process_start, forward = time.process_time(), 0.0
    for _ in range(batches):
        time.sleep(0.004)
        start = time.thread_time()
        layer.forward([], tops)
        forward += time.thread_time() - start
    time.sleep(0.05)  # the refill of the last slot
    process_cpu = time.process_time() - process_start
    if workers:
        decode = sum(process_cpu_seconds(pid) for pid in workers) - worker_start
    else:  # the prefetch thread: what the process used beyond the forwards
        decode = process_cpu - forward
    return forward / batches * 1e3, decode / batches * 1e3


def one_round(step, seconds: float) -> float:
    """Median ms of single steps over about ``seconds``, after a pause and a warm-up."""
    time.sleep(0.05)  # let the previous contender's spinning BLAS threads go to sleep
    for _ in range(3):
        step()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 5:
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="thread,process,auto",
                        help="Data layer decode modes: thread, process, auto (comma list)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                        help="add data/control, a second DummyData net (the noise floor)")
    parser.add_argument("--cost-batches", type=int, default=200,
                        help="batches for the Data-layer-alone CPU costs")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # as users' machines run
        os.environ.pop(var, None)
    workers = {"thread": "0", "process": "1", "auto": None}

    with tempfile.TemporaryDirectory(prefix="netforge-bench-datafeed-") as tmp:
        db = Path(tmp) / "mnist"
        records = write_mnist_lmdb(db)
        contenders = {"dummy": lenet_solver(None, None)}
        if args.control:  # a second DummyData net: its "overhead" is the noise floor
            contenders["data/control"] = lenet_solver(None, None)
        for mode in args.modes.split(","):
            contenders[f"data/{mode}"] = lenet_solver(db, workers[mode])
        steps = {name: (lambda s=s: s.step(1)) for name, s in contenders.items()}
        if not args.no_torch:
            try:
                import torch

                torch.set_num_threads(args.threads)
                steps["torch"] = torch_step()
            except ImportError:
                print("torch is not installed: no torch row", file=sys.stderr)
        costs = {name: data_layer_costs(solver, args.cost_batches)
                 for name, solver in contenders.items()
                 if name.startswith("data/") and name != "data/control"}
        scores: dict[str, list[float]] = {name: [] for name in steps}
        names = list(steps)
        for r in range(args.rounds):
            shift = r % len(names)  # rotate the order: no contender always follows another
            for name in names[shift:] + names[:shift]:
                scores[name].append(one_round(steps[name], args.seconds))
        for solver in contenders.values():
            solver.close()

    ms = {name: statistics.median(values) for name, values in scores.items()}
    print(f"LeNet TRAIN step, batch 64, {records}-record 32x32 MNIST LMDB, crop 28, "
          f"{args.threads} BLAS thread(s), {os.cpu_count()} core(s), load average "
          f"{os.getloadavg()[0]:.2f}; {args.rounds} interleaved rounds of {args.seconds} s")
    print("  (ms/step: median over rounds of each round's median step; overhead and ratios: "
          "median over rounds of the same round's ratio, so that load shared by both cancels)")
    for name, value in ms.items():
        line = f"  {name:14s} {value:7.3f} ms/step"
        if name.startswith("data/"):
            line += f"   overhead vs dummy {100 * (paired(scores, name, 'dummy') - 1):+6.1f} %"
        if "torch" in ms and name != "torch":
            line += f"   / torch {paired(scores, name, 'torch'):.2f}"
        print(line)


    print("Data layer alone, batches ready (CPU time: training thread per forward; decoding "
          "per batch, in the prefetch thread or the worker process):")
    for name, (forward, decode) in costs.items():
        print(f"  {name:14s} forward {forward:6.3f} ms   decode {decode:6.3f} ms")


def paired(scores: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a's time / b's time in the same round."""
    return statistics.median(x / y for x, y in zip(scores[a], scores[b], strict=True))


if __name__ == "__main__":
    main()

"""LeNet training step (batch 64: forward + backward + SGD update), netforge vs PyTorch CPU.

Both run in this process on the same random batch, with the same thread count. Prints
ms/step (median of several repeats), the ratio, and whether netforge's hot path allocates.

    .venv/bin/python tools/bench/lenet.py [--threads 2] [--steps 50]

PyTorch is a benchmark oracle only (pip install torch==2.13.0); netforge never imports it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

def netforge_solver(threads: int):
    from netforge import config
    from netforge import netforge_pb2 as pb
    from netforge.train.solver import Solver

    deploy = config.load_net_param(ROOT / "configs" / "lenet.prototxt")
    net = pb.NetParameter(name="LeNet")
    data = net.layer.add(name="data", type="Input")
    data.top.extend(["data", "label"])
    data.input_param.shape.add().dim.extend([64, 1, 28, 28])
    data.input_param.shape.add().dim.extend([64])
    for layer in deploy.layer[1:]:
        if layer.type == "Softmax":
            break
        net.layer.add().CopyFrom(layer)
    loss = net.layer.add(name="loss", type="SoftmaxWithLoss")
    loss.bottom.extend(["ip2", "label"])
    loss.top.append("loss")
    sp = pb.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="inv",
                            gamma=1e-4, power=0.75, max_iter=10**9, random_seed=1)
    sp.train_net_param.CopyFrom(net)
    return Solver(sp)


def torch_model():
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return model, opt, nn.CrossEntropyLoss()


def time_steps(step, steps: int, repeats: int) -> float:
    for _ in range(5):
        step()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        samples.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 64)

    solver = netforge_solver(args.threads)
    net = solver.net
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = y

    def nf_step():
        solver.step(1)

    nf_ms = time_steps(nf_step, args.steps, args.repeats)
    # Transient allocation on the hot path: the peak of traced memory during one step
    # above what was allocated before it (numpy reports its buffers to tracemalloc).
    tracemalloc.start()
    nf_step()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    nf_step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    transient = peak - base

    try:
        import torch
    except ImportError:
        print("torch is not installed: pip install torch==2.13.0", file=sys.stderr)
        print(f"netforge  {nf_ms:8.2f} ms/step; transient allocation {transient / 1024:.1f} KiB")
        return
    torch.set_num_threads(args.threads)
    model, opt, criterion = torch_model()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        opt.zero_grad(set_to_none=False)
        loss = criterion(model(tx), ty)
        loss.backward()
        opt.step()

    torch_ms = time_steps(torch_step, args.steps, args.repeats)
    print(f"LeNet train step, batch 64, {args.threads} thread(s), median of {args.repeats}x"
          f"{args.steps} steps")
    print(f"  netforge  {nf_ms:8.2f} ms/step")
    print(f"  pytorch   {torch_ms:8.2f} ms/step   (torch {torch.__version__})")
    print(f"  ratio netforge/pytorch = {nf_ms / torch_ms:.2f}")
    print(f"  netforge transient allocation per step: {transient / 1024:.1f} KiB")


if __name__ == "__main__":
    main()

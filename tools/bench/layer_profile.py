"""Per-layer time of a net's forward and backward (Caffe's ``caffe time``), for netforge.

    .venv/bin/python tools/bench/layer_profile.py lenet [--phase train|test] [--batch 64]
                                        [--iters 20] [--threads 2]
    .venv/bin/python tools/bench/layer_profile.py path/to/net.prototxt --phase test

NET is one of the bench's named nets (``lenet``, ``cifar10_quick``, ``alexnet``, ``resnet50``,
see ``tools/bench/nets.py``) or a prototxt path (its data layers become Input layers). Prints,
per layer, the median forward and backward milliseconds over ``--iters`` timed passes after a
warm-up, the share of the total, and the layer's top shape; then the totals and the time of
the update step (TRAIN). ``netforge time --model`` is the CLI form of the same measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def layer_times(net, iters: int, clock=time.perf_counter
                ) -> tuple[list[tuple[str, str, float, float, str]], float]:
    """[(layer name, type, forward ms, backward ms, top shape)] medians, and the median
    time of a whole forward+backward pass (which includes the per-layer timer calls).

    ``clock``: ``time.perf_counter`` (wall) or ``time.process_time`` (CPU time of all the
    process's threads: on a loaded machine, with one BLAS thread, a steadier measure of the
    work than wall time; with more threads it also counts their spin-waiting)."""
    steps = net.plan.steps
    fwd = [[] for _ in steps]
    bwd = [[] for _ in steps]
    totals = []
    for it in range(iters + 2):
        start = clock()
        for i, step in enumerate(steps):
            t0 = clock()
            step.layer.forward(step.bottoms, step.tops)
            fwd[i].append(clock() - t0)
        for top, w in net.plan.loss_tops:
            top.diff.fill(w)
        for i in range(len(steps) - 1, -1, -1):
            step = steps[i]
            if step.need_backward:
                t0 = clock()
                step.layer.backward(step.tops, step.propagate_down, step.bottoms)
                bwd[i].append(clock() - t0)
        totals.append(clock() - start)
        if it < 2:  # warm-up passes
            for samples in fwd + bwd:
                samples.clear()
            totals.clear()
    rows = []
    for i, step in enumerate(steps):
        shape = "x".join(str(d) for d in step.tops[0].shape) if step.tops else ""
        f = statistics.median(fwd[i]) * 1e3 if fwd[i] else 0.0
        b = statistics.median(bwd[i]) * 1e3 if bwd[i] else 0.0
        rows.append((step.layer.name, step.layer.type, f, b, shape))
    return rows, statistics.median(totals) * 1e3


def print_profile(rows, total_ms: float, out=sys.stdout) -> None:
    layer_sum = sum(f + b for _, _, f, b, _ in rows) or 1.0
    print(f"{'layer':<28} {'type':<16} {'fwd ms':>8} {'bwd ms':>8} {'share':>6}  top",
          file=out)
    for name, kind, f, b, shape in rows:
        print(f"{name[:28]:<28} {kind[:16]:<16} {f:8.3f} {b:8.3f} {(f + b) / layer_sum:6.1%}"
              f"  {shape}", file=out)
    fs = sum(r[2] for r in rows)
    bs = sum(r[3] for r in rows)
    print(f"{'sum of layers':<45} {fs:8.3f} {bs:8.3f}", file=out)
    print(f"{'forward+backward wall (median)':<45} {total_ms:8.3f}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net")
    parser.add_argument("--phase", default="train", choices=["train", "test"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall time, or the process's CPU time (steadier under load)")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import logging

    logging.disable(logging.INFO)
    import numpy as np

    from tools.bench import nets

    net = nets.build_netforge(args.net, args.phase, args.batch)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        net_rows, total = layer_times(net, args.iters, clock)
    print(f"{args.net}, phase {args.phase}, batch {net.blobs[net.inputs[0]].shape[0]}, "
          f"{args.threads} thread(s), {args.clock} clock, median of {args.iters}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print_profile(net_rows, total)


if __name__ == "__main__":
    main()

"""Interleaved A/B of netforge's compile-time switches on one bench net, in one process:
graph fusion (NETFORGE_NO_FUSION) and Winograd convolution (NETFORGE_NO_WINOGRAD), each on
and off, so that a loaded machine slows every variant alike.

    .venv/bin/python tools/bench/switches.py resnet50 predict [--batch 2] [--rounds 5]
        [--reps 3] [--cpu]

Each round times ``--reps`` steps of every variant in turn and scores their median; the table
shows the median over rounds and the ratio to the variant with both switches off. ``--cpu``
times with ``time.process_time`` (the work itself, summed over threads: with
OPENBLAS_NUM_THREADS=1 NETFORGE_NUM_THREADS=1 it is unaffected by other processes taking turns
on the cores) instead of the wall clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import nets  # tools/bench/, this script's folder

VARIANTS = {"neither": (False, False), "fusion": (True, False), "winograd": (False, True),
            "both": (True, True)}


def build(name: str, mode: str, batch: int, fusion: bool, winograd: bool):
    """A step function of the net, built with the switches set (they are read at build)."""
    os.environ["NETFORGE_NO_FUSION"] = "" if fusion else "1"
    os.environ["NETFORGE_NO_WINOGRAD"] = "" if winograd else "1"
    try:
        if mode == "train":
            solver = nets.make_solver(name, batch)
            return lambda: solver.step(1)
        net = nets.make_predict_net(name, batch)
        return net.forward
    finally:
        for key in ("NETFORGE_NO_FUSION", "NETFORGE_NO_WINOGRAD"):
            os.environ.pop(key, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net", choices=sorted(nets.NETS))
    parser.add_argument("mode", choices=("train", "predict"))
    parser.add_argument("--batch", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    batch = args.batch or nets.NETS[args.net].batch
    steps = {k: build(args.net, args.mode, batch, *v) for k, v in VARIANTS.items()}
    for step in steps.values():  # compile and warm up
        step()
        step()
    scores: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            times = []
            for _ in range(args.reps):
                start = clock()
                step()
                times.append(clock() - start)
            scores[key].append(statistics.median(times) * 1e3)
    base = statistics.median(scores["neither"])
    clock_name = "cpu" if args.cpu else "wall"
    print(f"{args.net} {args.mode} batch {batch} ({clock_name} ms, load "
          f"{os.getloadavg()[0]:.1f})")
    for key, values in scores.items():
        ms = statistics.median(values)
        print(f"  {key:9s} {ms:9.1f}  {ms / base:5.2f}")


if __name__ == "__main__":
    main()

"""Time netforge's conv_forward + conv_backward against torch's conv2d on LeNet's shapes.

Usage: python tools/bench/ops_conv.py [--reps 30] [--rounds 5]

Both run float32 on the CPU in this process (torch with 2 threads, the size of the CI
machine). Each row is forward + backward of one convolution (bias included, dx only where
the row says so). A block is ``--reps`` timed repetitions after warm-up and scores its median;
blocks of the three contenders alternate for ``--rounds`` rounds with a pause in between,
because torch's OpenMP threads and OpenBLAS's threads both spin for a while after their last
call and would otherwise steal the two cores from whoever runs next. The figure is the best
block median; the ratio is netforge / torch (< 1: netforge faster). "+reuse_col" is the
backward reusing the forward's im2col columns, as the Convolution layer calls it. torch is a
benchmarking reference only and is never imported by netforge itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from netforge.ops.vision import (
    conv_backward,
    conv_forward,
    conv_output_size,
    conv_workspace_shapes,
)
from netforge.ops.xp import allocate, pair

# (name, x shape, w shape, pad, stride, need dx)
CASES = [
    ("lenet conv1 (no dx)", (64, 1, 28, 28), (20, 1, 5, 5), 0, 1, False),
    ("lenet conv1", (64, 1, 28, 28), (20, 1, 5, 5), 0, 1, True),
    ("lenet conv2", (64, 20, 12, 12), (50, 20, 5, 5), 0, 1, True),
    ("resnet 3x3", (8, 64, 56, 56), (64, 64, 3, 3), 1, 1, True),
]


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    time.sleep(0.3)  # let the other library's spinning worker threads go to sleep
    for _ in range(10):  # and then wake this one's up again (and the caches, and the clock)
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _best_of_rounds(fns: list[Callable[[], object]], reps: int, rounds: int) -> list[float]:
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], _median_ms(fn, reps))
    return best


def _netforge_step(xs, wsh, pad, stride, need_dx, reuse_col):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(wsh, dtype=np.float32)
    b = rng.standard_normal(wsh[0], dtype=np.float32)
    oh = conv_output_size(xs[2], wsh[2], pad, stride)
    ow = conv_output_size(xs[3], wsh[3], pad, stride)
    y = np.empty((xs[0], wsh[0], oh, ow), np.float32)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = np.empty_like(x) if need_dx else None
    dw, db = np.zeros_like(w), np.zeros_like(b)
    ws = allocate(conv_workspace_shapes(xs, wsh, stride=stride, pad=pad, dtype=np.float32))
    geo = {"stride": pair(stride), "pad": pair(pad), "dilation": 1, "group": 1}

    def step():
        conv_forward(x, w, b, y, ws=ws, **geo)
        conv_backward(dy, x, w, dx=dx, dw=dw, db=db, ws=ws, reuse_col=reuse_col, **geo)

    return step


def _torch_step(xs, wsh, pad, stride, need_dx):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=gen).requires_grad_(need_dx)
    w = torch.randn(wsh, generator=gen, requires_grad=True)
    b = torch.randn(wsh[0], generator=gen, requires_grad=True)
    dy = torch.randn(F.conv2d(x, w, b, stride=stride, padding=pad).shape, generator=gen)

    def step():
        y = F.conv2d(x, w, b, stride=stride, padding=pad)
        y.backward(dy)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"numpy {np.__version__} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')!r}"
          f"), torch {torch.__version__} ({torch.get_num_threads()} threads); best of "
          f"{args.rounds} rounds of median-of-{args.reps} blocks")
    print(f"{'case':22s} {'torch ms':>9s} {'netforge ms':>12s} {'ratio':>6s} "
          f"{'+reuse_col ms':>14s} {'ratio':>6s}")
    for name, xs, wsh, pad, stride, need_dx in CASES:
        reps = max(5, args.reps // 5) if xs[2] > 28 else args.reps
        t_torch, t_nf, t_reuse = _best_of_rounds(
            [_torch_step(xs, wsh, pad, stride, need_dx),
             _netforge_step(xs, wsh, pad, stride, need_dx, False),
             _netforge_step(xs, wsh, pad, stride, need_dx, True)], reps, args.rounds)
        print(f"{name:22s} {t_torch:9.2f} {t_nf:12.2f} {t_nf / t_torch:6.2f} "
              f"{t_reuse:14.2f} {t_reuse / t_torch:6.2f}")


if __name__ == "__main__":
    main()

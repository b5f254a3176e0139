"""``netforge test``: run a net forward N times and average each output (Caffe's lines)."""

from __future__ import annotations

import logging

import numpy as np

from netforge.backend import to_host

log = logging.getLogger("netforge")


def add_outputs(net, totals: dict) -> dict[str, np.ndarray]:
    """Add each output of the last forward (as float64, flattened) into ``totals``; return
    this batch's values. Averaging them over the batches is Caffe's test score."""
    batch = {}
    for name in net.outputs:
        values = np.array(to_host(net.blobs[name].data), dtype=np.float64).ravel()
        totals[name] = totals[name] + values if name in totals else values
        batch[name] = values
    return batch


def run_test(net, iterations: int, progress=None) -> dict[str, float | list]:
    """Mean of every output over ``iterations`` forward passes; logs as ``caffe test`` does.

    ``progress`` is an optional callable(done, total) for a progress bar.
    """
    log.info("Running for %d iterations.", iterations)
    totals: dict[str, np.ndarray] = {}
    loss = 0.0
    last = len(net.plan.steps) - 1
    for i in range(iterations):
        loss += net.forward_range(0, last)
        for name, values in add_outputs(net, totals).items():
            for v in values:
                log.info("Batch %d, %s = %.6g", i, name, v)
        if progress is not None:
            progress(i + 1, iterations)
    log.info("Loss: %.6g", loss / max(iterations, 1))
    weights = {id(top): w for top, w in net.plan.loss_tops}
    means: dict[str, float | list] = {}
    for name, total in totals.items():
        mean = total / iterations
        w = weights.get(id(net.blobs[name]), 0.0)
        for v in mean:
            extra = f" (* {w:.6g} = {w * v:.6g} loss)" if w else ""
            log.info("%s = %.6g%s", name, v, extra)
        means[name] = float(mean[0]) if mean.size == 1 else mean.tolist()
    return means

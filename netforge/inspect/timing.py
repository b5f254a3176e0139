"""``netforge time``: Caffe's ``caffe time`` — per-layer forward and backward milliseconds.

As Caffe: one untimed forward and backward first, then ``iterations`` loops that time each
layer's forward (in order) and backward (in reverse order); backward runs for every layer
that has one, with the bottoms' propagate_down flags of the net, whether or not a loss
reaches it. Reported times are averages per iteration. On a GPU the device is synchronised
around each layer so that the time is the layer's own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from netforge.net import Net

log = logging.getLogger("netforge")


@dataclass
class LayerTime:
    name: str
    type: str
    forward_ms: float
    backward_ms: float


@dataclass
class TimingReport:
    layers: list[LayerTime]
    iterations: int
    forward_ms: float  # average forward pass
    backward_ms: float  # average backward pass
    total_ms: float  # whole benchmark, all iterations

    @property
    def forward_backward_ms(self) -> float:
        return self.total_ms / max(self.iterations, 1)


def _synchronizer(net: Net):
    xp = net.ctx.xp
    if xp.__name__ == "cupy":
        return xp.cuda.get_current_stream().synchronize
    return lambda: None


def time_net(net: Net, iterations: int = 50, progress=None) -> TimingReport:
    """Time ``net`` layer by layer (see the module docstring) and log Caffe's lines."""
    steps = net.plan.steps
    sync = _synchronizer(net)
    log.info("Performing Forward")
    loss = net.forward_range(0, len(steps) - 1)
    log.info("Initial loss: %g", loss)
    log.info("Performing Backward")
    _backward_all(net)
    sync()
    forward = [0.0] * len(steps)
    backward = [0.0] * len(steps)
    forward_total = backward_total = 0.0
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    total_start = time.perf_counter()
    for it in range(iterations):
        iter_start = time.perf_counter()
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            step.layer.forward(step.bottoms, step.tops)
            sync()
            forward[i] += time.perf_counter() - t0
        forward_total += time.perf_counter() - iter_start
        backward_start = time.perf_counter()
        for i in range(len(steps) - 1, -1, -1):
            step = steps[i]
            if not step.layer.has_backward:
                continue
            t0 = time.perf_counter()
            step.layer.backward(step.tops, step.propagate_down, step.bottoms)
            sync()
            backward[i] += time.perf_counter() - t0
        backward_total += time.perf_counter() - backward_start
        log.info("Iteration: %d forward-backward time: %.6g ms.", it + 1,
                 1e3 * (time.perf_counter() - iter_start))
        if progress is not None:
            progress(it + 1, iterations)
    total = time.perf_counter() - total_start
    n = max(iterations, 1)
    layers = [LayerTime(s.layer.name, s.layer.type, 1e3 * forward[i] / n, 1e3 * backward[i] / n)
              for i, s in enumerate(steps)]
    report = TimingReport(layers, iterations, 1e3 * forward_total / n, 1e3 * backward_total / n,
                          1e3 * total)
    _log_report(report)
    return report


def _backward_all(net: Net) -> None:
    for top, w in net.plan.loss_tops:
        top.diff.fill(w)
    for step in reversed(net.plan.steps):
        if step.layer.has_backward:
            step.layer.backward(step.tops, step.propagate_down, step.bottoms)


def _log_report(report: TimingReport) -> None:
    log.info("Average time per layer: ")
    for layer in report.layers:
        log.info("%10s\tforward: %.6g ms.", layer.name, layer.forward_ms)
        log.info("%10s\tbackward: %.6g ms.", layer.name, layer.backward_ms)
    for line in caffe_totals(report):
        log.info("%s", line)
    log.info("*** Benchmark ends ***")


def caffe_totals(report: TimingReport) -> list[str]:
    """``caffe time``'s closing lines, word for word (scripts grep them)."""
    return [f"Average Forward pass: {report.forward_ms:.6g} ms.",
            f"Average Backward pass: {report.backward_ms:.6g} ms.",
            f"Average Forward-Backward: {report.forward_backward_ms:.6g} ms.",
            f"Total Time: {report.total_ms:.6g} ms."]


def format_table(report: TimingReport) -> str:
    """A table: layer, type, forward ms, backward ms, share of the total; then the totals."""
    both = sum(layer.forward_ms + layer.backward_ms for layer in report.layers) or 1.0
    rows = [("layer", "type", "forward ms", "backward ms", "share")]
    for layer in report.layers:
        share = 100.0 * (layer.forward_ms + layer.backward_ms) / both
        rows.append((layer.name, layer.type, f"{layer.forward_ms:.3f}",
                     f"{layer.backward_ms:.3f}", f"{share:.1f}%"))
    rows.append(("(average pass)", "", f"{report.forward_ms:.3f}", f"{report.backward_ms:.3f}",
                 ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    align = ["<", "<", ">", ">", ">"]
    lines = ["  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(r, align, widths, strict=True))
             .rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    lines.append(f"forward-backward {report.forward_backward_ms:.3f} ms per iteration; "
                 f"total {report.total_ms:.1f} ms for {report.iterations} iterations")
    return "\n".join(lines)

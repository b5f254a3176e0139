"""Caffe's ``debug_info: true`` lines: the mean absolute value of every blob a layer writes,
forward and backward, and of each parameter and its update (Net::ForwardDebugInfo,
BackwardDebugInfo, UpdateDebugInfo), in Caffe's words so that log tools find them:

    [Forward] Layer conv1, top blob conv1 data: 0.0731
    [Forward] Layer conv1, param blob 0 data: 0.0412
    [Backward] Layer conv1, bottom blob data diff: 1.2e-05
    [Backward] Layer conv1, param blob 0 diff: 0.00193
    [Update] Layer conv1, param 0 data: 0.0412; diff: 1.9e-05

As in Caffe, the solver turns them on for the train net on display iterations only; a net
whose prototxt says ``debug_info: true`` logs every pass.
"""

from __future__ import annotations

import logging

from netforge import backend

log = logging.getLogger("netforge")


def abs_mean(array) -> float:
    """Caffe's asum / count (0 for an empty blob)."""
    if array is None or array.size == 0:
        return 0.0
    return float(backend.to_host(abs(array).sum())) / array.size


def forward_lines(step) -> list[str]:
    name = step.layer.name
    lines = [f"    [Forward] Layer {name}, top blob {top_name} data: {abs_mean(top.data):g}"
             for top_name, top in zip(step.top_names, step.tops, strict=True)]
    lines += [f"    [Forward] Layer {name}, param blob {k} data: {abs_mean(blob.data):g}"
              for k, blob in enumerate(step.layer.blobs)]
    return lines


def backward_lines(step) -> list[str]:
    name = step.layer.name
    lines = [f"    [Backward] Layer {name}, bottom blob {bottom_name} diff: "
             f"{abs_mean(bottom.diff):g}"
             for bottom_name, bottom, down in zip(step.bottom_names, step.bottoms,
                                                  step.propagate_down, strict=False) if down]
    lines += [f"    [Backward] Layer {name}, param blob {k} diff: {abs_mean(blob.diff):g}"
              for k, blob in enumerate(step.layer.blobs)
              if k < len(step.layer.param_propagate_down) and step.layer.param_propagate_down[k]]
    return lines


def update_lines(learnable) -> list[str]:
    """After the update: each parameter (updated) and the step it took (its diff)."""
    return [f"    [Update] Layer {p.layer_name}, param {p.name or p.index} data: "
            f"{abs_mean(p.blob.data):g}; diff: {abs_mean(p.blob.diff):g}" for p in learnable]


def emit(lines) -> None:
    for line in lines:
        log.info("%s", line)

"""Numerical gradient checks for layers (Caffe's GradientChecker recipe), public so users
can check their own layers too.

Objective: Σ_k Σ(top_k · R_k) for fixed random R_k. The analytic gradient comes from the
layer's backward with top diffs R_k; the numeric one from central differences. Agreement is
judged relative to magnitude: |a − n| ≤ threshold · max(|a|, |n|, 1). Points within
``kink_range`` of a ``kink`` (ReLU's 0, max-pool ties) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.graph.compile import compile_net
from netforge.layers.base import LayerContext


@dataclass
class GradientMismatch:
    what: str
    index: tuple
    analytic: float
    numeric: float


def build_single_layer(layer_text: str, bottoms: list[np.ndarray], *, phase: str = "TRAIN",
                       seed: int = 1701, dtype=np.float64):
    """A plan with Input layers feeding ``bottoms`` into the one layer of ``layer_text``.

    Bottoms are named ``b0``, ``b1``, ...; the layer text must use those names.
    Returns (plan, step of the layer under test).
    """
    net = pb.NetParameter(name="check", force_backward=True)
    for j, array in enumerate(bottoms):
        inp = net.layer.add(name=f"input{j}", type="Input")
        inp.top.append(f"b{j}")
        inp.input_param.shape.add().dim.extend(array.shape)
    config.parse_text(layer_text, net.layer.add(), "layer under test")
    ctx = LayerContext(phase=phase, dtype=np.dtype(dtype), rng=np.random.default_rng(seed))
    plan = compile_net(net, ctx)
    for j, array in enumerate(bottoms):
        plan.blobs[f"b{j}"].data[...] = array
    return plan, plan.steps[-1]


def run_forward(plan, seed: int = 1701) -> None:
    for step in plan.steps:
        # Reseed random layers (Dropout) so every forward draws the same mask.
        if hasattr(step.layer, "rng"):
            step.layer.rng = np.random.default_rng(seed)
        step.layer.forward(step.bottoms, step.tops)


def check_gradients(plan, step, *, check_bottoms=None, step_size: float = 1e-6,
                    threshold: float = 1e-5, kink: float | None = None,
                    kink_range: float = -1.0, seed: int = 1701) -> list[GradientMismatch]:
    """Compare analytic and numeric gradients of bottoms and params; return the mismatches."""
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(top.shape) for top in step.tops]
    if any(top is bottom for top in step.tops for bottom in step.bottoms):
        raise ValueError("gradient checks need a layer that does not run in place")

    def objective() -> float:
        run_forward(plan, seed)
        return float(sum((top.data * w).sum() for top, w in zip(step.tops, weights, strict=True)))

    objective()
    for top, w in zip(step.tops, weights, strict=True):
        top.diff[...] = w
    for blob in step.layer.blobs:
        blob.diff[...] = 0
    bottoms_to_check = [
        j for j in range(len(step.bottoms))
        if (check_bottoms is None or j in check_bottoms) and j not in step.layer.no_gradient_bottoms
    ]
    propagate = [j in bottoms_to_check for j in range(len(step.bottoms))]
    step.layer.backward(step.tops, propagate, step.bottoms)
    targets = [(f"bottom {j}", step.bottoms[j], step.bottoms[j].diff.copy())
               for j in bottoms_to_check]
    targets += [(f"param {k}", blob, blob.diff.copy()) for k, blob in enumerate(step.layer.blobs)]

    mismatches = []
    for what, blob, analytic in targets:
        data = blob.data
        for index in np.ndindex(data.shape):
            original = data[index]
            if kink is not None and abs(original - kink) < kink_range:
                continue
            data[index] = original + step_size
            plus = objective()
            data[index] = original - step_size
            minus = objective()
            data[index] = original
            numeric = (plus - minus) / (2 * step_size)
            a = float(analytic[index])
            scale = max(abs(a), abs(numeric), 1.0)
            if abs(a - numeric) > threshold * scale:
                mismatches.append(GradientMismatch(what, index, a, numeric))
    objective()
    return mismatches

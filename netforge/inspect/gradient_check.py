"""Numerical gradient checks (Caffe's GradientChecker recipe), public so users can check
their own layers too, and the one central-difference implementation the tests use.

Objective: Σ_k Σ(top_k · R_k) for fixed random R_k. The analytic gradient comes from the
layer's backward with top diffs R_k; the numeric one from float64 central differences
(``numeric_gradient``). Agreement is judged relative to magnitude (``mismatched``):
|a − n| ≤ threshold · max(|a|, |n|, 1). Points within ``kink_range`` of a ``kink`` (ReLU's
0, max-pool ties) are skipped.

    numeric_gradient(objective, wrt, *, step_size, skip)  element by element, NaN where skipped
    mismatched(analytic, numeric, threshold)     |a − n| > threshold · max(|a|, |n|, 1)
    directional_error(objective, wrt, direction, expected, *, step_size, at)
                                                          a whole net along one direction
    check_gradients(plan, step, ...)                      one layer's bottoms and params
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.graph.compile import compile_net
from netforge.layers.base import LayerContext
from netforge.ops.random import philox_key


@dataclass
class GradientMismatch:
    what: str
    index: tuple
    analytic: float
    numeric: float


def build_single_layer(layer_text: str, bottoms: list[np.ndarray], *, phase: str = "TRAIN",
                       seed: int = 1701, dtype=np.float64, xp=np):
    """A plan with Input layers feeding ``bottoms`` into the one layer of ``layer_text``.

    Bottoms are named ``b0``, ``b1``, ...; the layer text must use those names. ``xp``: the
    array module the plan computes with (numpy, or cupy: the same table rows on the GPU).
    Returns (plan, step of the layer under test).
    """
    net = pb.NetParameter(name="check", force_backward=True)
    for j, array in enumerate(bottoms):
        inp = net.layer.add(name=f"input{j}", type="Input")
        inp.top.append(f"b{j}")
        inp.input_param.shape.add().dim.extend(array.shape)
    config.parse_text(layer_text, net.layer.add(), "layer under test")
    ctx = LayerContext(phase=phase, dtype=np.dtype(dtype), xp=xp,
                       rng=np.random.default_rng(seed), random_key=philox_key(seed))
    plan = compile_net(net, ctx)
    for j, array in enumerate(bottoms):
        plan.blobs[f"b{j}"].data[...] = xp.asarray(array)
    return plan, plan.steps[-1]


def run_forward(plan, seed: int = 1701) -> None:
    for step in plan.steps:
        # Rewind random layers (Dropout) so every forward draws the same mask.
        stream = getattr(step.layer, "random", None)
        if stream is not None:  # a counter-based stream (ops/random.py)
            stream.draws[...] = 0
        elif hasattr(step.layer, "rng"):
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
        skip = None if kink is None else np.abs(blob.data - kink) < kink_range
        numeric = numeric_gradient(objective, blob.data, step_size=step_size, skip=skip)
        bad = mismatched(analytic, numeric, threshold)
        for index in np.ndindex(bad.shape):  # () for a scalar param
            if bad[index]:
                mismatches.append(GradientMismatch(what, index, float(analytic[index]),
                                                   float(numeric[index])))
    objective()
    return mismatches


def numeric_gradient(objective: Callable[[], float], wrt: np.ndarray, *,
                     step_size: float = 1e-6, skip: np.ndarray | None = None) -> np.ndarray:
    """d objective() / d wrt by central differences, one element at a time.

    ``wrt`` (float64) is perturbed in place by ±``step_size`` and restored exactly;
    ``objective`` must read it. Elements where ``skip`` is True are not perturbed and come
    back as NaN.
    """
    if wrt.dtype != np.float64:
        raise ValueError(f"gradient checks run in float64, got {wrt.dtype}")
    grad = np.full(wrt.shape, np.nan)
    for index in np.ndindex(wrt.shape):
        if skip is not None and skip[index]:
            continue
        original = wrt[index]
        wrt[index] = original + step_size
        plus = objective()
        wrt[index] = original - step_size
        minus = objective()
        wrt[index] = original
        grad[index] = (plus - minus) / (2 * step_size)
    return grad


def mismatched(analytic, numeric, threshold: float = 1e-5) -> np.ndarray:
    """Where |a − n| > threshold · max(|a|, |n|, 1), elementwise (False where either is NaN,
    as for skipped elements).

    The floor of 1 makes the test absolute for gradients below one, where float64 round-off
    in the objective dominates the relative error.
    """
    a, n = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), 1.0)
    return np.abs(a - n) > threshold * scale


def directional_error(objective: Callable[[], float], wrt: np.ndarray, direction: np.ndarray,
                      expected: float, *, step_size: float = 1e-7,
                      at: float | None = None) -> tuple[float, list[float]]:
    """How well ``expected`` (the analytic Σ grad · direction) matches finite differences of
    ``objective`` along ``direction``, for checks of a whole net where element-by-element
    differences would cost one forward per weight.

    Returns (the smallest relative error |expected − e| / |e|, the estimates e): the central
    difference and the two one-sided ones. A ReLU or max-pool kink within ``step_size`` on
    one side bends the central difference; the one-sided difference on the other side is
    then still exact to first order, while a wrong gradient matches none of the three (the
    kink skipping of the direction check). ``at`` is objective() at the unperturbed point
    when the caller has it already. ``wrt`` is restored exactly.
    """
    if wrt.dtype != np.float64:
        raise ValueError(f"gradient checks run in float64, got {wrt.dtype}")
    at_x = objective() if at is None else at
    saved = wrt.copy()
    wrt += step_size * direction
    up = objective()
    wrt[...] = saved - step_size * direction
    down = objective()
    wrt[...] = saved
    estimates = [(up - down) / (2 * step_size), (up - at_x) / step_size,
                 (at_x - down) / step_size]
    return min(abs(expected - e) / abs(e) for e in estimates), estimates

"""The divergence guard: stop training at the first NaN/Inf and say where it appeared.

Every iteration costs one float32 sum per learnable parameter's gradient (a NaN or Inf
anywhere makes the sum non-finite) plus a look at the loss. Only when one of those is
non-finite do we pay for the search that names the first layer whose output — or, if every
output is finite, whose gradient — went bad.
"""

from __future__ import annotations

import math

from netforge.backend import to_host
from netforge.errors import DivergenceError


def _non_finite(array) -> str | None:
    """"NaN" or "Inf" when the array holds one, else None."""
    total = float(to_host(array.sum()))
    if math.isfinite(total):
        return None
    xp_any = array != array  # NaN is the one value unequal to itself
    return "NaN" if bool(to_host(xp_any.any())) else "Inf"


def gradients_finite(net) -> bool:
    return all(math.isfinite(float(to_host(p.blob.diff.sum()))) for p in net.learnable_params)


def non_finite_weights(net) -> str | None:
    """The first layer whose weights hold a NaN/Inf, described; None when all are finite.
    Checked before a snapshot is written, so a snapshot never preserves a diverged model."""
    for p in net.learnable_params:
        kind = _non_finite(p.blob.data)
        if kind:
            return f'the weights of layer "{p.layer_name}" (param {p.index}) hold {kind}'
    return None


def locate(net) -> str:
    """Where the first non-finite value of the last forward/backward came from."""
    steps = net.plan.steps
    for step in steps:  # forward order: the first layer whose output went bad
        for name, top in zip(step.top_names, step.tops, strict=True):
            kind = _non_finite(top.data)
            if kind:
                return f'the output "{name}" of {step.layer.label} became {kind}'
    for step in reversed(steps):  # backward order: the first gradient that went bad
        for k, blob in enumerate(step.layer.blobs):
            kind = _non_finite(blob.diff)
            if kind and step.layer.param_propagate_down[k]:
                return f"the gradient of {step.layer.label} parameter {k} became {kind}"
        for name, bottom, down in zip(step.bottom_names, step.bottoms, step.propagate_down,
                                      strict=True):
            kind = _non_finite(bottom.diff) if down else None
            if kind:
                return (f'the gradient that {step.layer.label} sends to "{name}" '
                        f"became {kind}")
    return "a non-finite value appeared"


def check(net, iteration: int, loss: float, last_snapshot) -> None:
    """Raise DivergenceError naming iteration and layer when the loss or a gradient is not
    finite. Call after forward/backward, before the update touches the weights."""
    if math.isfinite(loss) and gradients_finite(net):
        return
    where = locate(net)
    kept = f"; the last good snapshot is {last_snapshot}" if last_snapshot else (
        "; no snapshot was written before it")
    raise DivergenceError(
        f"training diverged at iteration {iteration}: {where} (loss = {loss:g}){kept}. "
        "Lower base_lr or add clip_gradients."
    )

"""The divergence guard: stop training at the first NaN/Inf and say where it appeared.

Every iteration costs one float32 sum per learnable parameter's gradient (a NaN or Inf
anywhere makes the sum non-finite) plus a look at the loss — all on the compute device
(``Guard``): a 0-d flag is raised there, the update rule leaves the weights untouched while
it is up, and the host reads it only when the solver displays, tests, snapshots or returns.
Then, and only when it is set, we pay for the search that names the first layer whose
output — or, if every output is finite, whose gradient — went bad.
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


def locate(net, bad_param=None) -> str:
    """Where the first non-finite value of the last forward/backward came from.
    ``bad_param``: (blob, "NaN"/"Inf") of a gradient the guard saw go bad before an update
    overwrote it (the update rules reuse the diff); it is reported in its backward place."""
    steps = net.plan.steps
    for step in steps:  # forward order: the first layer whose output went bad
        for name, top in zip(step.top_names, step.tops, strict=True):
            kind = _non_finite(top.data)
            if kind:
                return f'the output "{name}" of {step.layer.label} became {kind}'
    for step in reversed(steps):  # backward order: the first gradient that went bad
        for k, blob in enumerate(step.layer.blobs):
            if bad_param is not None and blob is bad_param[0]:
                return f"the gradient of {step.layer.label} parameter {k} became {bad_param[1]}"
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


class Guard:
    """The device side of the guard for one train net.

    ``watch(loss, iteration)`` (every iteration, before the update): ``flag`` |= the loss or
    a gradient sum is not finite; the first such iteration and its loss are kept. ``raise_if_
    diverged`` reads the flag (display, test, snapshot, end of a step) and raises.
    """

    def __init__(self, net):
        xp = net.ctx.xp
        self.net = net
        self.params = [p.blob for p in net.learnable_params]
        dtype = self.params[0].data.dtype if self.params else net.ctx.dtype
        self.flag = xp.zeros((), dtype=bool)  # sticky: once diverged, the weights stay put
        self.iteration = xp.zeros((), dtype=xp.int64)
        self.loss = xp.zeros((), dtype=xp.float64)
        self._total = xp.zeros((), dtype=xp.float64)
        self._part = xp.zeros((), dtype=dtype)
        self._now = xp.zeros((), dtype=bool)
        self._first = xp.zeros((), dtype=bool)
        self._bad, self._nan = xp.zeros((), dtype=bool), xp.zeros((), dtype=bool)
        # The last (in backward order: first) parameter whose gradient went bad, and whether
        # with a NaN: this iteration's, and the diverging iteration's.
        self._param_now, self._nan_now = xp.zeros((), dtype=xp.int64), xp.zeros((), dtype=bool)
        self.param = xp.full((), -1, dtype=xp.int64)
        self.param_nan = xp.zeros((), dtype=bool)

    def watch(self, loss, iteration: int) -> None:
        xp = self.net.ctx.xp
        total, part, now, first = self._total, self._part, self._now, self._first
        xp.copyto(total, loss)
        self._param_now.fill(-1)
        for k, blob in enumerate(self.params):  # a float32 sum per gradient, as
            xp.sum(blob.diff, out=part)         # gradients_finite does
            xp.add(total, part, out=total)
            xp.isfinite(part, out=self._bad)
            xp.logical_not(self._bad, out=self._bad)
            xp.isnan(part, out=self._nan)
            xp.copyto(self._param_now, k, where=self._bad)
            xp.copyto(self._nan_now, self._nan, where=self._bad)
        xp.isfinite(total, out=now)
        xp.logical_not(now, out=now)
        xp.logical_not(self.flag, out=first)
        xp.logical_and(first, now, out=first)  # diverged just now
        xp.copyto(self.iteration, iteration, where=first)
        xp.copyto(self.loss, loss, where=first)
        xp.copyto(self.param, self._param_now, where=first)
        xp.copyto(self.param_nan, self._nan_now, where=first)
        xp.logical_or(self.flag, now, out=self.flag)

    def raise_if_diverged(self, solver) -> None:
        """The host read: DivergenceError, naming iteration and layer, if the flag is up.
        The solver's iteration is set back to the one that diverged: the weights are
        still those it started from (the updates since were no-ops)."""
        if not bool(to_host(self.flag)):
            return
        iteration = int(to_host(self.iteration))
        solver.iter = iteration
        k = int(to_host(self.param))
        bad = (self.params[k], "NaN" if bool(to_host(self.param_nan)) else "Inf") if k >= 0 \
            else None
        raise_divergence(self.net, iteration, float(to_host(self.loss)),
                         solver.snapshots.last, bad)


def raise_divergence(net, iteration: int, loss: float, last_snapshot, bad_param=None) -> None:
    where = locate(net, bad_param)
    kept = f"; the last good snapshot is {last_snapshot}" if last_snapshot else (
        "; no snapshot was written before it")
    raise DivergenceError(
        f"training diverged at iteration {iteration}: {where} (loss = {loss:g}){kept}. "
        "Lower base_lr or add clip_gradients."
    )

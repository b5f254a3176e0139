"""Caffe's update rules, keyed by the solver's ``type``.

Per parameter, in Caffe's order: normalize (÷ iter_size) → regularize (L2/L1 with decay_mult)
→ compute the update value into ``diff`` → ``data -= diff``. Gradient clipping runs before,
on all parameters together. Every buffer is allocated once, when the rule is created.

Nothing is read back from the compute device: the clipping norm and factor are 0-d device
arrays, and a device flag (the divergence guard's) turns the weight update into a no-op —
the update values are zeroed when it is set — so the step needs no host decision.
"""

from __future__ import annotations

import logging
import math

from netforge.backend import to_host
from netforge.errors import ConfigError
from netforge.ops import compiled

log = logging.getLogger("netforge")

CHUNK = 1 << 18  # elements of the bounded scratch (1 MB in float32)


class UpdateRule:
    """Base: owns the history blobs (``history``: one list of arrays per history slot)."""

    slots = 1  # history arrays per parameter (Caffe stores all of slot 0, then slot 1)
    scratch_buffers = 1  # shared scratch arrays a rule needs for one parameter's update
    # Whether compute_update uses ``temp`` as one whole-parameter array. When it does not
    # (SGD), the scratch is one bounded chunk that regularization and clipping walk a
    # parameter with: AlexNet's fc6 no longer costs a 151 MB scratch.
    whole_parameter_scratch = True

    def __init__(self, solver_param, params):
        self.sp = solver_param
        self.params = params
        xp = params[0].blob.xp if params else None
        self.history = [[xp.zeros_like(p.blob.data) for p in params] for _ in range(self.slots)]
        # Scratch for one parameter's update at a time: every parameter's ``temp`` is a view
        # of one buffer as large as the largest parameter (a copy per parameter doubled the weights'
        # memory: 244 MB for AlexNet).
        largest = max((p.blob.count for p in params), default=0)
        dtype = params[0].blob.data.dtype if params else None
        views = []
        if not self.whole_parameter_scratch:
            largest = min(largest, CHUNK)
        for _ in range(self.scratch_buffers):
            shared = xp.zeros(largest, dtype=dtype) if params else None
            views.append([shared[:p.blob.count].reshape(p.blob.shape)
                          if p.blob.count <= largest else None for p in params])
        self._chunk = shared[:largest] if params else None
        self.temp = views[0]
        self.temp2 = views[1] if len(views) > 1 else []  # Nesterov and AdaDelta need two
        # 0-d device scalars for clipping: Σ g² (float64), one parameter's share, the factor
        self._sumsq = xp.zeros((), dtype="float64") if params else None
        self._part = xp.zeros((), dtype=dtype) if params else None
        self._factor = xp.zeros((), dtype=dtype) if params else None
        self._check()

    def _check(self) -> None:
        pass

    # The rule's one-pass kernel in netforge.ops.compiled.update_rules (None: none), and
    # its arguments beyond the parameter's arrays, normalization and regularization.
    fused_kernel: str | None = None

    def fused_args(self, local_rate: float, iteration: int) -> dict:
        return {}

    def apply(self, rate: float, iteration: int, *, skip=None, verbose: bool = True) -> None:
        """One update. ``skip``: a 0-d bool device array; when it holds True the weights are
        left untouched (the update values are zeroed on the device, nothing is read back).
        ``verbose``: log gradient clipping (reads its norm back; the solver asks on display
        iterations only)."""
        self.clip_gradients(verbose)
        for i, p in enumerate(self.params):
            if p.lr_mult == 0:
                continue
            if self.fused_update(i, p, rate * p.lr_mult, iteration, skip):
                continue
            self.normalize(p)
            self.regularize(i, p)
            self.compute_update(i, p, rate * p.lr_mult, iteration)
            if skip is not None:
                p.blob.xp.copyto(p.blob.diff, 0, where=skip)
            p.blob.data -= p.blob.diff

    def fused_update(self, i: int, p, local_rate: float, iteration: int, skip=None) -> bool:
        """normalize, regularize, compute_update and ``data -= diff`` in one compiled pass,
        when there is a kernel for this rule and these arrays; False: do it step by step.
        The kernels are for host (numpy) arrays, where reading ``skip`` costs nothing: a
        raised skip flag takes the step-by-step path, which zeroes the update exactly as
        it does on a device (the history is updated the same way on both paths)."""
        history = [slot[i] for slot in self.history]
        if self.fused_kernel is None or not compiled.active(p.blob.data, p.blob.diff,
                                                            *history, skip):
            return False
        if skip is not None and bool(skip):
            return False
        decay = self.sp.weight_decay * p.decay_mult
        kind = self.sp.regularization_type if decay else None
        if kind not in (None, "L2", "L1"):
            return False  # regularize() names the bad value
        norm = 1.0 / self.sp.iter_size if self.sp.iter_size > 1 else 1.0
        kernel = getattr(compiled.load("update_rules"), self.fused_kernel)
        kernel(p.blob.data, p.blob.diff, *history, norm=norm, reg=kind, decay=decay,
               **self.fused_args(local_rate, iteration))
        return True

    def clip_gradients(self, verbose: bool = True) -> None:
        threshold = self.sp.clip_gradients
        if threshold < 0 or not self.params:
            return
        xp = self.params[0].blob.xp
        sumsq, part, factor = self._sumsq, self._part, self._factor
        sumsq.fill(0)
        for p in self.params:
            if p.lr_mult:
                for g, _, t in self._chunks(p.blob.diff, p.blob.diff):
                    xp.multiply(g, g, out=t)
                    xp.sum(t, out=part)
                    xp.add(sumsq, part, out=sumsq)
        if verbose:
            norm = math.sqrt(float(to_host(sumsq)))
            if norm > threshold:
                log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by "
                         "scale factor %g", norm, threshold, threshold / norm)
        # factor = threshold / max(norm, threshold): threshold / norm when clipping, exactly 1
        # otherwise; computed in float64 and rounded once, as a Python float operand is.
        xp.sqrt(sumsq, out=sumsq)
        xp.maximum(sumsq, threshold, out=sumsq)
        xp.divide(threshold, sumsq, out=factor, casting="same_kind")
        for p in self.params:
            if p.lr_mult:
                p.blob.diff *= factor

    def _chunks(self, a, b):
        """(a piece, b piece, scratch piece) over the flat arrays a and b (same size), in
        pieces as large as the scratch: bounded memory, the same elementwise results."""
        flat_a, flat_b, n = a.reshape(-1), b.reshape(-1), a.size
        step = self._chunk.size
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            yield flat_a[lo:hi], flat_b[lo:hi], self._chunk[:hi - lo]

    def normalize(self, p) -> None:
        if self.sp.iter_size > 1:
            p.blob.diff *= 1.0 / self.sp.iter_size

    def regularize(self, i: int, p) -> None:
        decay = self.sp.weight_decay * p.decay_mult
        if not decay:
            return
        kind = self.sp.regularization_type
        if kind not in ("L2", "L1"):
            raise ConfigError(f'unknown regularization_type "{kind}" (use "L2" or "L1")')
        xp = p.blob.xp
        for w, g, t in self._chunks(p.blob.data, p.blob.diff):
            if kind == "L2":
                xp.multiply(w, decay, out=t)
            else:
                xp.sign(w, out=t)
                t *= decay
            g += t

    def compute_update(self, i: int, p, local_rate: float, iteration: int) -> None:
        raise NotImplementedError


class SGD(UpdateRule):
    """v = momentum·v + lr·g; diff = v (the rate lives inside the momentum buffer)."""

    whole_parameter_scratch = False
    fused_kernel = "sgd"

    def fused_args(self, local_rate, iteration):
        return {"rate": local_rate, "momentum": self.sp.momentum}

    def compute_update(self, i, p, local_rate, iteration):
        # Four passes over the parameter's size (memory-bound for AlexNet's 61M weights);
        # the same operations, in the same order, as v = momentum·v + lr·g — lr·g is formed
        # in the gradient itself, which becomes v anyway, so no scratch is needed.
        xp, v, g = p.blob.xp, self.history[0][i], p.blob.diff
        v *= self.sp.momentum
        xp.multiply(g, local_rate, out=g)
        v += g
        xp.copyto(g, v)


class Nesterov(SGD):
    """v' = momentum·v + lr·g; diff = (1+momentum)·v' − momentum·v."""

    whole_parameter_scratch = True
    fused_kernel = "nesterov"

    scratch_buffers = 2

    def compute_update(self, i, p, local_rate, iteration):
        xp, g, m = p.blob.xp, p.blob.diff, self.sp.momentum
        v, prev, t = self.history[0][i], self.temp[i], self.temp2[i]
        xp.copyto(prev, v)
        v *= m
        xp.multiply(g, local_rate, out=t)
        v += t
        xp.multiply(v, 1 + m, out=g)
        prev *= m
        g -= prev


class AdaGrad(SGD):
    """h += g²; diff = lr·g / (√h + delta)."""

    whole_parameter_scratch = True
    fused_kernel = "adagrad"

    def fused_args(self, local_rate, iteration):
        return {"rate": local_rate, "delta": self.sp.delta}

    def _check(self):
        if self.sp.momentum != 0:
            raise ConfigError("AdaGrad does not use momentum; set momentum: 0")

    def compute_update(self, i, p, local_rate, iteration):
        xp, h, t, g = p.blob.xp, self.history[0][i], self.temp[i], p.blob.diff
        xp.multiply(g, g, out=t)
        h += t
        _divide_by_root(xp, g, h, t, self.sp.delta, local_rate)


class RMSProp(SGD):
    """h = d·h + (1−d)·g²; diff = lr·g / (√h + delta)."""

    whole_parameter_scratch = True
    fused_kernel = "rmsprop"

    def fused_args(self, local_rate, iteration):
        return {"rate": local_rate, "delta": self.sp.delta, "rms_decay": self.sp.rms_decay}

    def _check(self):
        if self.sp.momentum != 0:
            raise ConfigError("RMSProp does not use momentum; set momentum: 0")
        if not 0 <= self.sp.rms_decay < 1:
            raise ConfigError(f"rms_decay must be in [0, 1), got {self.sp.rms_decay}")

    def compute_update(self, i, p, local_rate, iteration):
        xp, h, t, g, d = p.blob.xp, self.history[0][i], self.temp[i], p.blob.diff, self.sp.rms_decay
        xp.multiply(g, g, out=t)
        t *= 1 - d
        h *= d
        h += t
        _divide_by_root(xp, g, h, t, self.sp.delta, local_rate)


class AdaDelta(SGD):
    """h = m·h + (1−m)g²; u = g·√((h2+δ)/(h+δ)); h2 = m·h2 + (1−m)u²; diff = lr·u."""

    whole_parameter_scratch = True
    fused_kernel = "adadelta"

    def fused_args(self, local_rate, iteration):
        return {"rate": local_rate, "delta": self.sp.delta, "momentum": self.sp.momentum}

    slots = 2
    scratch_buffers = 2

    def compute_update(self, i, p, local_rate, iteration):
        xp, g, m, delta = p.blob.xp, p.blob.diff, self.sp.momentum, self.sp.delta
        t, t2 = self.temp[i], self.temp2[i]
        h, h2 = self.history[0][i], self.history[1][i]
        xp.multiply(g, g, out=t)
        h *= m
        t *= 1 - m
        h += t
        xp.add(h2, delta, out=t)
        xp.add(h, delta, out=t2)
        t /= t2
        xp.sqrt(t, out=t)
        g *= t
        xp.multiply(g, g, out=t)
        h2 *= m
        t *= 1 - m
        h2 += t
        g *= local_rate


class Adam(SGD):
    """m, v moments; diff = lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + delta), t = iteration + 1."""

    whole_parameter_scratch = True
    fused_kernel = "adam"

    def fused_args(self, local_rate, iteration):
        b1, b2, step = self.sp.momentum, self.sp.momentum2, iteration + 1
        correction = math.sqrt(1 - b2**step) / (1 - b1**step)
        return {"rate": local_rate * correction, "delta": self.sp.delta, "beta1": b1,
                "beta2": b2}

    slots = 2

    def compute_update(self, i, p, local_rate, iteration):
        xp, g, t = p.blob.xp, p.blob.diff, self.temp[i]
        b1, b2 = self.sp.momentum, self.sp.momentum2
        m, v = self.history[0][i], self.history[1][i]
        step = iteration + 1
        correction = math.sqrt(1 - b2**step) / (1 - b1**step)
        m *= b1
        xp.multiply(g, 1 - b1, out=t)
        m += t
        xp.multiply(g, g, out=t)
        t *= 1 - b2
        v *= b2
        v += t
        xp.sqrt(v, out=t)
        t += self.sp.delta
        xp.divide(m, t, out=g)
        g *= local_rate * correction


def _divide_by_root(xp, g, h, t, delta, local_rate) -> None:
    """g = local_rate · g / (√h + delta), with ``t`` as scratch (AdaGrad, RMSProp)."""
    xp.sqrt(h, out=t)
    t += delta
    xp.divide(g, t, out=g)
    g *= local_rate


RULES = {"SGD": SGD, "Nesterov": Nesterov, "AdaGrad": AdaGrad, "RMSProp": RMSProp,
         "AdaDelta": AdaDelta, "Adam": Adam}


def make_update_rule(solver_param, params) -> UpdateRule:
    kind = solver_param.type
    if kind not in RULES:
        raise ConfigError(f'unknown solver type "{kind}"; known types: {", ".join(RULES)}')
    return RULES[kind](solver_param, params)

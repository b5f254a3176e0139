"""Each solver update rule as one pass over a parameter (flat arrays): Caffe's normalize
(÷ iter_size) → regularize (L2: + decay·w, L1: + decay·sign(w)) → the rule's update value
into ``diff`` → ``data -= diff``, the same operations in the same order as
``netforge.train.update_rules`` but reading and writing each element once.

Scalars arrive cast to the data's type, so float32 parameters are updated in float32
arithmetic as the reference's numpy calls do. ``reg``: 0 none, 1 L2, 2 L1.
"""

from __future__ import annotations

import math

from netforge.ops.compiled.jit import kernel

REGULARIZATION = {None: 0, "L2": 1, "L1": 2}


@kernel
def _gradient(g, w, norm, reg, decay):
    g = g * norm
    if reg == 1:
        g += w * decay
    elif reg == 2:  # sign(w) * decay, as numpy.sign (0 at 0)
        if w > 0:
            g += decay
        elif w < 0:
            g -= decay
    return g


@kernel
def _sgd(w, diff, h, norm, reg, decay, rate, momentum):
    for k in range(w.size):
        g = _gradient(diff[k], w[k], norm, reg, decay)
        v = h[k] * momentum + g * rate
        h[k] = v
        diff[k] = v
        w[k] -= v


@kernel
def _nesterov(w, diff, h, norm, reg, decay, rate, momentum):
    one = momentum + 1
    for k in range(w.size):
        g = _gradient(diff[k], w[k], norm, reg, decay)
        prev = h[k]
        v = prev * momentum + g * rate
        h[k] = v
        u = v * one - prev * momentum
        diff[k] = u
        w[k] -= u


@kernel
def _adagrad(w, diff, h, norm, reg, decay, rate, delta):
    for k in range(w.size):
        g = _gradient(diff[k], w[k], norm, reg, decay)
        acc = h[k] + g * g
        h[k] = acc
        u = g / (math.sqrt(acc) + delta) * rate
        diff[k] = u
        w[k] -= u


@kernel
def _rmsprop(w, diff, h, norm, reg, decay, rate, delta, rms_decay, rest):
    for k in range(w.size):
        g = _gradient(diff[k], w[k], norm, reg, decay)
        acc = h[k] * rms_decay + g * g * rest
        h[k] = acc
        u = g / (math.sqrt(acc) + delta) * rate
        diff[k] = u
        w[k] -= u


@kernel
def _adadelta(w, diff, h, h2, norm, reg, decay, rate, delta, momentum, rest):
    for k in range(w.size):
        g = _gradient(diff[k], w[k], norm, reg, decay)
        acc = h[k] * momentum + g * g * rest
        h[k] = acc
        u = g * math.sqrt((h2[k] + delta) / (acc + delta))
        h2[k] = h2[k] * momentum + u * u * rest
        u = u * rate
        diff[k] = u
        w[k] -= u


@kernel
def _adam(w, diff, m, v, norm, reg, decay, rate, delta, beta1, rest1, beta2, rest2):
    for k in range(w.size):
        g = _gradient(diff[k], w[k], norm, reg, decay)
        mk = m[k] * beta1 + g * rest1
        vk = v[k] * beta2 + g * g * rest2
        m[k] = mk
        v[k] = vk
        u = mk / (math.sqrt(vk) + delta) * rate
        diff[k] = u
        w[k] -= u


def _flat(a):
    return a.reshape(-1)


def sgd(w, diff, h, *, norm, reg, decay, rate, momentum) -> None:
    t = w.dtype.type
    _sgd(_flat(w), _flat(diff), _flat(h), t(norm), REGULARIZATION[reg], t(decay), t(rate),
         t(momentum))


def nesterov(w, diff, h, *, norm, reg, decay, rate, momentum) -> None:
    t = w.dtype.type
    _nesterov(_flat(w), _flat(diff), _flat(h), t(norm), REGULARIZATION[reg], t(decay), t(rate),
              t(momentum))


def adagrad(w, diff, h, *, norm, reg, decay, rate, delta) -> None:
    t = w.dtype.type
    _adagrad(_flat(w), _flat(diff), _flat(h), t(norm), REGULARIZATION[reg], t(decay), t(rate),
             t(delta))


def rmsprop(w, diff, h, *, norm, reg, decay, rate, delta, rms_decay) -> None:
    t = w.dtype.type
    _rmsprop(_flat(w), _flat(diff), _flat(h), t(norm), REGULARIZATION[reg], t(decay), t(rate),
             t(delta), t(rms_decay), t(1 - rms_decay))


def adadelta(w, diff, h, h2, *, norm, reg, decay, rate, delta, momentum) -> None:
    t = w.dtype.type
    _adadelta(_flat(w), _flat(diff), _flat(h), _flat(h2), t(norm), REGULARIZATION[reg],
              t(decay), t(rate), t(delta), t(momentum), t(1 - momentum))


def adam(w, diff, m, v, *, norm, reg, decay, rate, delta, beta1, beta2) -> None:
    t = w.dtype.type
    _adam(_flat(w), _flat(diff), _flat(m), _flat(v), t(norm), REGULARIZATION[reg], t(decay),
          t(rate), t(delta), t(beta1), t(1 - beta1), t(beta2), t(1 - beta2))


"""Caffe's learning-rate policies as pure functions of (solver parameter, iteration).

``multistep`` is stateful in Caffe (``current_step``, saved in the solverstate); here the
step is recomputed from the iteration, and ``current_step`` is derived for the solverstate.
"""

from __future__ import annotations

import math

from netforge.errors import ConfigError


def multistep_current_step(param, it: int) -> int:
    """How many ``stepvalue``s the iteration has reached (Caffe's current_step)."""
    return sum(1 for value in param.stepvalue if it >= value)


def _fixed(p, it):
    return p.base_lr


def _step(p, it):
    if p.stepsize <= 0:
        raise ConfigError('lr_policy "step" needs stepsize > 0')
    return p.base_lr * p.gamma ** (it // p.stepsize)


def _exp(p, it):
    return p.base_lr * p.gamma**it


def _inv(p, it):
    return p.base_lr * (1.0 + p.gamma * it) ** (-p.power)


def _multistep(p, it):
    return p.base_lr * p.gamma ** multistep_current_step(p, it)


def _poly(p, it):
    if p.max_iter <= 0:
        raise ConfigError('lr_policy "poly" needs max_iter > 0')
    return p.base_lr * (1.0 - it / p.max_iter) ** p.power


def _sigmoid(p, it):
    if p.stepsize <= 0:
        raise ConfigError('lr_policy "sigmoid" needs stepsize > 0')
    return p.base_lr * (1.0 / (1.0 + math.exp(-p.gamma * (it - p.stepsize))))


POLICIES = {
    "fixed": _fixed,
    "step": _step,
    "exp": _exp,
    "inv": _inv,
    "multistep": _multistep,
    "poly": _poly,
    "sigmoid": _sigmoid,
}


def learning_rate(param, it: int) -> float:
    """The rate at iteration ``it`` (evaluated before that iteration's update)."""
    policy = param.lr_policy
    if policy not in POLICIES:
        known = ", ".join(POLICIES)
        raise ConfigError(f'unknown lr_policy "{policy}"; known policies: {known}')
    return float(POLICIES[policy](param, it))

"""Parameter initialisers keyed by ``FillerParameter.type`` (Caffe's fillers).

Fan-in for a blob of shape (O, C, kh, kw) is count / O; fan-out is count / C.
"""

from __future__ import annotations

from math import prod

import numpy as np

from netforge.errors import ConfigError

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


def _fan(shape, variance_norm: int) -> float:
    count = prod(shape)
    fan_in = count / shape[0] if len(shape) > 0 and shape[0] else count
    fan_out = count / shape[1] if len(shape) > 1 and shape[1] else count
    if variance_norm == FAN_OUT:
        return fan_out
    if variance_norm == AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def _constant(f, shape, rng):
    return np.full(shape, f.value, dtype=np.float64)


def _uniform(f, shape, rng):
    return rng.uniform(f.min, f.max, size=shape)


def _gaussian(f, shape, rng):
    values = rng.normal(f.mean, f.std, size=shape)
    if f.sparse >= 0:
        # Caffe keeps each weight with probability sparse / num_outputs, so that each output
        # sees on average `sparse` non-zero inputs.
        num_outputs = shape[0] if len(shape) else 1
        keep = rng.random(size=shape) < (f.sparse / num_outputs)
        values *= keep
    return values


def _positive_unitball(f, shape, rng):
    values = rng.uniform(0.0, 1.0, size=shape)
    rows = values.reshape(shape[0] if shape else 1, -1)  # a 0-D blob is one row, as in Caffe
    rows /= rows.sum(axis=1, keepdims=True)
    return values


def _xavier(f, shape, rng):
    scale = np.sqrt(3.0 / _fan(shape, f.variance_norm))
    return rng.uniform(-scale, scale, size=shape)


def _msra(f, shape, rng):
    std = np.sqrt(2.0 / _fan(shape, f.variance_norm))
    return rng.normal(0.0, std, size=shape)


def _bilinear(f, shape, rng):
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ConfigError(f"bilinear filler needs a 4-D blob with square kernels, got {shape}")
    k = shape[3]
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.arange(k)
    kernel_1d = 1 - np.abs(og - center) / factor
    return np.broadcast_to(np.outer(kernel_1d, kernel_1d), shape).copy()


FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


def check_filler(filler_param) -> None:
    """ConfigError when ``filler_param.type`` names no known filler."""
    kind = filler_param.type
    if kind not in FILLERS:
        raise ConfigError(f'unknown filler type "{kind}"; known fillers: {", ".join(FILLERS)}')


def fill(filler_param, shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """A host array of ``shape`` initialised as ``filler_param`` (a FillerParameter) says."""
    check_filler(filler_param)
    shape = tuple(int(d) for d in shape)
    values = FILLERS[filler_param.type](filler_param, shape, rng)
    return np.asarray(values, dtype=dtype).reshape(shape)

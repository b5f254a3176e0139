"""Low-rank factorisation (SVD) of InnerProduct and Convolution layers.

A layer's weight W, as the matrix it multiplies with (InnerProduct N×K; Convolution O×(C·kh·kw),
im2col's view), is cut to rank r by its SVD, W ≈ (U_r·S_r)·V_rᵀ, r the smallest rank whose
singular values hold ``energy`` of Σ s² (the squared Frobenius norm). The layer L becomes two:
  * ``L_lowrank``: V_rᵀ, r outputs, no bias (for a Convolution: r filters with L's kernel,
    stride, pad and dilation);
  * ``L``: U_r·S_r and L's bias (for a Convolution: a 1×1 convolution), L's top.
The second keeps L's name only if asked; by default it is ``L_uv`` so that a finetune from the
original weights copies every other layer and leaves these two to the factorisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netforge import backend
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError


def energy_rank(singular_values, energy: float) -> int:
    """The smallest r with Σ_{i<r} s_i² ≥ energy · Σ s_i²."""
    if not 0 < energy <= 1:
        raise ConfigError(f"low-rank energy must be in (0, 1], got {energy}")
    power = np.asarray(singular_values, np.float64) ** 2
    cumulative = np.cumsum(power) / power.sum()
    return int(min(np.searchsorted(cumulative, energy - 1e-12) + 1, power.size))


@dataclass
class Factor:
    layer: str
    rank: int
    params_before: int
    params_after: int
    first: np.ndarray  # V_rᵀ, in the first layer's blob shape
    second: np.ndarray  # U_r·S_r, in the second layer's blob shape
    bias: np.ndarray | None


def factorize_layer(layer, energy: float | None = None, rank: int | None = None) -> Factor:
    """SVD factors of a built Convolution / InnerProduct layer's weights."""
    if layer.type not in ("InnerProduct", "Convolution"):
        raise ConfigError(f'layer "{layer.name}" is a {layer.type}; low rank factorises '
                          "InnerProduct and Convolution layers")
    w = backend.to_host(layer.blobs[0].data).astype(np.float64)
    if layer.type == "InnerProduct" and layer.param.inner_product_param.transpose:
        raise ConfigError(f'layer "{layer.name}": transposed InnerProduct is not supported')
    if layer.type == "Convolution" and layer.param.convolution_param.group > 1:
        raise ConfigError(f'layer "{layer.name}": grouped convolution is not supported')
    matrix = w.reshape(w.shape[0], -1)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    r = rank if rank else energy_rank(s, energy)
    first = vt[:r]
    second = u[:, :r] * s[:r]
    bias = backend.to_host(layer.blobs[1].data) if len(layer.blobs) > 1 else None
    if layer.type == "Convolution":
        first = first.reshape((r, *w.shape[1:]))
        second = second.reshape(w.shape[0], r, *([1] * (w.ndim - 2)))
    after = first.size + second.size + (bias.size if bias is not None else 0)
    before = w.size + (bias.size if bias is not None else 0)
    return Factor(layer.name, r, before, after, first.astype(np.float32),
                  second.astype(np.float32), bias)


def factorized_net_param(param: pb.NetParameter, factors: dict[str, Factor]) -> pb.NetParameter:
    """``param`` with each factorised layer replaced by its two layers (fillers left as they
    were; the weights come from ``factor_blobs``)."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        factor = factors.get(layer.name)
        if factor is None:
            out.layer.add().CopyFrom(layer)
            continue
        first = out.layer.add()
        first.CopyFrom(layer)
        first.name = f"{layer.name}_lowrank"
        del first.top[:]
        first.top.append(first.name)
        del first.param[:]
        if layer.param:
            first.param.add().CopyFrom(layer.param[0])
        second = out.layer.add()
        second.CopyFrom(layer)
        second.name = f"{layer.name}_uv"
        del second.bottom[:]
        second.bottom.append(first.name)
        if layer.type == "InnerProduct":
            first.inner_product_param.num_output = factor.rank
            first.inner_product_param.bias_term = False
            second.inner_product_param.axis = 1
        else:
            c1 = first.convolution_param
            c1.num_output = factor.rank
            c1.bias_term = False
            c2 = second.convolution_param
            for name in ("kernel_size", "stride", "pad", "dilation"):
                c2.ClearField(name)
            for name in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w"):
                c2.ClearField(name)
            c2.kernel_size.append(1)
    return out


def factor_blobs(factors: dict[str, Factor]) -> dict[str, list[np.ndarray]]:
    """Layer name -> the blobs of the two layers that replace it."""
    blobs = {}
    for name, f in factors.items():
        blobs[f"{name}_lowrank"] = [f.first]
        blobs[f"{name}_uv"] = [f.second] + ([f.bias] if f.bias is not None else [])
    return blobs


def load_factor_blobs(net, blobs: dict[str, list[np.ndarray]]) -> None:
    for name, arrays in blobs.items():
        layer = net.layer_dict.get(name)
        if layer is None:
            continue
        for blob, values in zip(layer.blobs, arrays, strict=True):
            blob.data[...] = blob.xp.asarray(values.reshape(blob.shape))


def low_rank_solver(trainer, targets: dict[str, float]):
    """A new Solver whose train/test nets are ``trainer``'s with the ``targets`` layers
    ({layer: energy in (0, 1], or a rank > 1}) factorised, weights carried over: the other
    layers' copied by name, the factorised ones from the SVD. Returns (solver, factors, the
    factorised NetParameter)."""
    from netforge import config
    from netforge.train.solver import Solver

    layers = trainer.net.layer_dict
    unknown = sorted(set(targets) - set(layers))
    if unknown:
        raise ConfigError(f"--low-rank names {', '.join(unknown)}, not layers of the train net")
    factors = {}
    for name, value in targets.items():
        by_rank = value > 1
        factors[name] = factorize_layer(layers[name], rank=int(value) if by_rank else None,
                                        energy=None if by_rank else value)
    sp = pb.SolverParameter()
    sp.CopyFrom(trainer.param)
    sp.test_interval = max(sp.max_iter, 1)  # valid for the checks; the caller tests itself
    train_param, test_params, _ = config.solver_net_params(sp, trainer.path)
    if any(t is not train_param for t in test_params):
        raise ConfigError("low rank needs a solver whose test nets come from its one `net`")
    factorised = factorized_net_param(train_param, factors)
    for field in ("net", "net_param", "train_net", "train_net_param", "test_net",
                  "test_net_param"):
        sp.ClearField(field)
    sp.net_param.CopyFrom(factorised)
    solver = Solver(sp, metrics=False)
    solver.param.test_interval = 0
    for layer in solver.net.layers:
        old = layers.get(layer.name)
        if old is None or not layer.blobs or layer.name in factors:
            continue
        for blob, source in zip(layer.blobs, old.blobs, strict=True):
            blob.data[...] = source.data
    load_factor_blobs(solver.net, factor_blobs(factors))
    return solver, factors, factorised

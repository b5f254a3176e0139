"""Magnitude pruning with masks the solver keeps (Han et al. 2015, "Learning both weights and
connections for efficient neural networks").

A ``ParamMasks`` holds, for each pruned learnable parameter, a 0/1 array of its shape. The
solver (``Solver.masks``) calls ``mask_gradients`` before each update, so gradient clipping
and the history never see a pruned weight's gradient, and ``apply`` after it, which sets the
pruned weights and every history slot of theirs to exactly 0, whatever the update rule. The
masks travel in the solverstate (``SolverState.pruning_mask``), so a resumed run prunes the
same weights bit for bit.

Only weights are pruned (param 0 of Convolution / InnerProduct layers): biases are few and
pruning them costs accuracy for nothing.
"""

from __future__ import annotations

import logging

import numpy as np

from netforge import backend
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, DataError

log = logging.getLogger("netforge")

PRUNABLE_TYPES = ("Convolution", "InnerProduct")


def magnitude_kept(values: np.ndarray, *, sparsity: float | None = None,
                   quality: float | None = None, kept: np.ndarray | None = None) -> np.ndarray:
    """The weights to keep (bool, ``values``' shape).

    ``sparsity`` F prunes the round(F·n) weights of smallest |w| (already pruned ones first, so
    repeated calls with growing F prune iteratively); ``quality`` q prunes |w| < q·std(w) over
    the kept weights (Han et al.'s threshold). Exactly one of the two.
    """
    if (sparsity is None) == (quality is None):
        raise ConfigError("give a pruning target as either a sparsity or a quality")
    values = np.asarray(values, dtype=np.float64)
    kept = np.ones(values.shape, bool) if kept is None else np.asarray(kept, bool)
    if quality is not None:
        if quality < 0:
            raise ConfigError(f"pruning quality must be >= 0, got {quality}")
        threshold = quality * float(values[kept].std()) if kept.any() else 0.0
        return kept & (np.abs(values) >= threshold)
    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    magnitude = np.where(kept, np.abs(values), -1.0).ravel()  # pruned ones sort first
    n_pruned = int(round(sparsity * magnitude.size))
    order = np.argsort(magnitude, kind="stable")
    result = np.ones(magnitude.size, bool)
    result[order[:n_pruned]] = False
    return result.reshape(values.shape) & kept


def checked_param_index(params, index: int, what: str, where: str) -> int:
    """``index`` if the net has a learnable param there; else the one-line error naming the
    solver state (shared by the pruning masks and the weight-sharing clusters)."""
    if index >= len(params):
        raise DataError(f"{where}: {what} for param {index} but the net has "
                        f"{len(params)} learnable params")
    return index


class ParamMasks:
    """Per learnable parameter (by index in ``params``), the 0/1 mask of the weights kept."""

    def __init__(self, params):
        self.params = params
        self.masks: dict[int, object] = {}

    def set(self, index: int, kept) -> None:
        blob = self.params[index].blob
        kept = np.asarray(kept, bool)
        if kept.shape != tuple(blob.shape):
            raise ConfigError(f"mask of shape {kept.shape} for param {index} of shape "
                              f"{tuple(blob.shape)}")
        self.masks[index] = blob.xp.asarray(kept.astype(blob.data.dtype))

    def kept(self, index: int) -> np.ndarray | None:
        mask = self.masks.get(index)
        return None if mask is None else backend.to_host(mask).astype(bool)

    def mask_gradients(self) -> None:
        for i, mask in self.masks.items():
            self.params[i].blob.diff *= mask

    def apply(self, history=()) -> None:
        """Pruned weights and their history to exactly 0 (after every update)."""
        for i, mask in self.masks.items():
            self.params[i].blob.data *= mask
            for slot in history:
                slot[i] *= mask

    # -- solverstate -------------------------------------------------------------------------
    def to_protos(self) -> list[pb.ParamMask]:
        out = []
        for i in sorted(self.masks):
            kept = self.kept(i)
            out.append(pb.ParamMask(param_index=i, shape=list(kept.shape),
                                    kept_bits=np.packbits(kept.ravel()).tobytes()))
        return out

    @classmethod
    def from_protos(cls, params, protos, where: str = "solver state") -> ParamMasks:
        masks = cls(params)
        for proto in protos:
            i = checked_param_index(params, proto.param_index, "pruning mask", where)
            shape = tuple(int(d) for d in proto.shape)
            count = int(np.prod(shape))
            bits = np.frombuffer(proto.kept_bits, np.uint8)
            if shape != tuple(params[i].blob.shape) or bits.size != (count + 7) // 8:
                raise DataError(f"{where}: pruning mask {i} has shape {shape} but the param "
                                f"has {tuple(params[i].blob.shape)} (or its bits are damaged)")
            masks.set(i, np.unpackbits(bits, count=count).reshape(shape).astype(bool))
        return masks


def prunable_params(net) -> dict[str, int]:
    """Layer name -> index (in ``net.learnable_params``) of its prunable weight blob."""
    types = {layer.name: layer.type for layer in net.layers}
    return {p.layer_name: i for i, p in enumerate(net.learnable_params)
            if p.index == 0 and types.get(p.layer_name) in PRUNABLE_TYPES}


def prune(solver, targets: dict[str, dict]) -> dict[str, tuple[int, int]]:
    """Prune ``solver``'s train net to ``targets`` ({layer: {"sparsity": F} or {"quality": q}})
    on top of any existing masks, install the masks in the solver, and zero the pruned
    weights and history. Returns {layer: (kept, total)}."""
    params = solver.net.learnable_params
    if solver.masks is None:
        solver.masks = ParamMasks(params)
    index_of = prunable_params(solver.net)
    unknown = sorted(set(targets) - set(index_of))
    if unknown:
        raise ConfigError(f"cannot prune {', '.join(unknown)}: prunable layers are "
                          f"{', '.join(index_of) or 'none'}")
    counts = {}
    for name, target in targets.items():
        i = index_of[name]
        values = backend.to_host(params[i].blob.data)
        kept = magnitude_kept(values, kept=solver.masks.kept(i), **target)
        solver.masks.set(i, kept)
        counts[name] = (int(kept.sum()), kept.size)
    solver.masks.apply(solver.rule.history)
    return counts


def unprune(solver) -> None:
    """DSD's re-dense step: forget the masks (pruned weights restart from 0)."""
    solver.masks = None

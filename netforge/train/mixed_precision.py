"""Mixed precision: compute in bf16/fp16, keep fp32 master weights, scale the loss.

Three pieces, all xp-generic (numpy in the CPU tests, CuPy on a GPU) and free of host reads
inside a step, so that the step can be captured as one CUDA graph:

- ``resolve_precisions(net_param)``: the compute type of every layer from the prototxt's
  netforge fields (NetParameter.precision, LayerParameter.precision; proto numbers 10300,
  10301). Losses, Softmax and BatchNorm always compute in FLOAT32 whatever is asked.
- ``LossScaler``: dynamic loss scaling as a device-resident state machine (``scale``,
  ``good_steps``, ``found_inf``; PyTorch GradScaler's rules, NVCaffe's schema):
  overflow → skip the update, scale × backoff; ``growth_interval`` clean steps → scale ×
  growth (≤ max_scale). FLOAT16 nets scale by default; BFLOAT16 (fp32's exponent range)
  and FLOAT32 only when the solver sets ``loss_scale``.
- ``MasterWeights``: fp32 copies of the (low-precision) parameters; per step it unscales
  the gradients into fp32, runs the solver's ordinary update rule on the masters, undoes it
  on the device when ``found_inf`` is set, and casts the masters back.

On CuPy the unscale/check and the scale update use the fused kernels of
``netforge.ops.cuda.amp``; on numpy the same rules run as plain ufuncs.

Not done yet: the plan runs one dtype per net, so a layer whose resolved precision differs
from its net's is refused with a ConfigError (per-layer casts need the graph compiler).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from netforge import netforge_pb2 as pb
from netforge.blob import Blob
from netforge.errors import ConfigError

_TYPE_NAMES = {pb.PrecisionParameter.FLOAT32: "FLOAT32",
               pb.PrecisionParameter.FLOAT16: "FLOAT16",
               pb.PrecisionParameter.BFLOAT16: "BFLOAT16"}

# Layers whose arithmetic stays fp32: their sums, exponentials and statistics lose too much
# in 8 (bf16) or 11 (fp16) bits of mantissa.
FP32_LAYER_TYPES = frozenset({
    "SoftmaxWithLoss", "Softmax", "EuclideanLoss", "SigmoidCrossEntropyLoss",
    "MultinomialLogisticLoss", "InfogainLoss", "HingeLoss", "ContrastiveLoss", "BatchNorm",
    "Accuracy", "Data", "ImageData", "HDF5Data", "Input", "MemoryData", "WindowData",
    "DummyData", "Python",
})


def compute_dtype(name: str) -> np.dtype:
    """numpy dtype for FLOAT32, FLOAT16 or BFLOAT16 (bf16 through ml_dtypes)."""
    if name == "FLOAT32":
        return np.dtype(np.float32)
    if name == "FLOAT16":
        return np.dtype(np.float16)
    if name == "BFLOAT16":
        try:
            import ml_dtypes
        except ImportError as exc:
            raise ConfigError("precision BFLOAT16 needs the ml_dtypes package "
                              "(pip install 'netforge[gpu]')") from exc
        return np.dtype(ml_dtypes.bfloat16)
    raise ConfigError(f'unknown precision "{name}" (FLOAT32, FLOAT16 or BFLOAT16)')


@dataclass(frozen=True)
class LayerPrecision:
    compute: str  # "FLOAT32", "FLOAT16" or "BFLOAT16"
    tf32: bool
    forced_fp32: bool = False  # asked for less, kept at FLOAT32 (FP32_LAYER_TYPES)


def net_precision(net_param) -> LayerPrecision:
    if not net_param.HasField("precision"):
        return LayerPrecision("FLOAT32", False)
    p = net_param.precision
    return LayerPrecision(_TYPE_NAMES[p.compute], p.tf32)


def resolve_precisions(net_param) -> dict[str, LayerPrecision]:
    """{layer name: its precision}: the layer's own field, else the net's; FP32 types kept."""
    default = net_precision(net_param)
    resolved = {}
    for layer in net_param.layer:
        chosen = default
        if layer.HasField("precision"):
            p = layer.precision
            tf32 = p.tf32 if p.HasField("tf32") else default.tf32
            chosen = LayerPrecision(_TYPE_NAMES[p.compute], tf32)
        if chosen.compute != "FLOAT32" and layer.type in FP32_LAYER_TYPES:
            chosen = replace(chosen, compute="FLOAT32", forced_fp32=True)
        resolved[layer.name] = chosen
    return resolved


def check_single_precision(net_param) -> LayerPrecision:
    """The net's precision, refusing per-layer overrides the plan cannot honour yet."""
    default = net_precision(net_param)
    for name, p in resolve_precisions(net_param).items():
        if p.compute != default.compute and not p.forced_fp32:
            raise ConfigError(
                f'layer "{name}": precision {p.compute} differs from the net\'s '
                f"{default.compute}; per-layer precision is parsed but not supported yet "
                "(set precision on the net only)")
    return default


def scaling_param(solver_param, compute: str):
    """(enabled, LossScaleParameter): FLOAT16 scales by default, others only when asked."""
    if solver_param.HasField("loss_scale"):
        return True, solver_param.loss_scale
    return compute == "FLOAT16", pb.LossScaleParameter()


def _is_numpy(xp) -> bool:
    return xp is np


class LossScaler:
    """Device-resident dynamic loss scale. Call ``begin_step`` before backward, seed the
    loss diff with ``scale``, ``unscale`` each gradient, then ``update`` once per step."""

    def __init__(self, param, xp=np, *, enabled: bool = True):
        if param.growth_factor <= 1 or not 0 < param.backoff_factor < 1:
            raise ConfigError("loss_scale: growth_factor must be > 1 and backoff_factor in "
                              f"(0, 1), got {param.growth_factor} and {param.backoff_factor}")
        if param.growth_interval < 1:
            raise ConfigError("loss_scale: growth_interval must be at least 1")
        self.param = param
        self.xp = xp
        self.enabled = enabled
        self.dynamic = enabled and param.dynamic
        init = param.init_scale if enabled else 1.0
        self.scale = xp.full((1,), init, dtype=np.float32)
        self.good_steps = xp.zeros((1,), dtype=np.int32)
        self.found_inf = xp.zeros((1,), dtype=np.int32)

    def begin_step(self) -> None:
        self.found_inf.fill(0)

    def unscale(self, grad, master_grad) -> None:
        """master_grad (fp32) = grad / scale; found_inf set if any value is NaN/Inf."""
        xp = self.xp
        if not _is_numpy(xp):
            from netforge.ops.cuda import amp

            amp.unscale_and_check(grad, master_grad, self.scale, self.found_inf)
            return
        xp.divide(grad.astype(np.float32), self.scale[0], out=master_grad)
        bad = ~xp.isfinite(master_grad).all()
        xp.maximum(self.found_inf, bad.astype(np.int32), out=self.found_inf)

    def update(self) -> None:
        if not self.dynamic:
            return
        xp, p = self.xp, self.param
        if not _is_numpy(xp):
            from netforge.ops.cuda import amp

            amp.update_scale(self.scale, self.good_steps, self.found_inf,
                             growth_factor=p.growth_factor, backoff_factor=p.backoff_factor,
                             growth_interval=p.growth_interval, max_scale=p.max_scale)
            return
        overflow = self.found_inf > 0
        grown = self.good_steps + 1 >= p.growth_interval
        backed = (self.scale.astype(np.float64) * p.backoff_factor).astype(np.float32)
        bigger = np.minimum(self.scale.astype(np.float64) * p.growth_factor,
                            p.max_scale).astype(np.float32)
        self.scale[...] = xp.where(overflow, backed, xp.where(grown, bigger, self.scale))
        self.good_steps[...] = xp.where(overflow | grown, 0, self.good_steps + 1)

    def host_state(self) -> tuple[float, int, bool]:
        """(scale, good_steps, found_inf) on the host — a sync: for logs and tests only."""
        from netforge.backend import to_host

        return (float(to_host(self.scale)[0]), int(to_host(self.good_steps)[0]),
                bool(to_host(self.found_inf)[0]))


class MasterWeights:
    """fp32 masters for low-precision params, updated by an ordinary UpdateRule.

    ``make_rule(solver_param, master_params)`` builds the rule on the fp32 copies (so its
    history is fp32 too). ``apply(rate, iteration)``: unscale grads into the masters' diffs,
    back up masters and history, run the rule, restore where ``found_inf``, cast back.
    """

    def __init__(self, solver_param, params, scaler: LossScaler, make_rule):
        self.params = params
        self.scaler = scaler
        xp = scaler.xp
        self.xp = xp
        self.masters = []
        for p in params:
            blob = Blob(p.blob.shape, np.float32, xp)
            blob.data[...] = p.blob.data.astype(np.float32)
            self.masters.append(replace(p, blob=blob))
        self.rule = make_rule(solver_param, self.masters)
        self._state = [m.blob.data for m in self.masters] + [
            h for slot in self.rule.history for h in slot]
        self._backup = [xp.empty_like(a) for a in self._state]

    def apply(self, rate: float, iteration: int) -> None:
        xp, scaler = self.xp, self.scaler
        for p, m in zip(self.params, self.masters, strict=True):
            scaler.unscale(p.blob.diff, m.blob.diff)
        for src, dst in zip(self._state, self._backup, strict=True):
            xp.copyto(dst, src)
        self.rule.apply(rate, iteration)
        skip = scaler.found_inf.astype(bool)
        for kept, current in zip(self._backup, self._state, strict=True):
            xp.copyto(current, kept, where=skip.reshape((1,) * current.ndim))
        for p, m in zip(self.params, self.masters, strict=True):
            p.blob.data[...] = m.blob.data.astype(p.blob.data.dtype)
        scaler.update()

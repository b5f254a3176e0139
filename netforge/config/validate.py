"""The validation pass run when a solver or net file is loaded: ranges, required fields and
combinations that the protobuf schema cannot say, checked before any work starts.

Each rule names the file, line, layer and field of the value it refuses:
``solver.prototxt:4:1: base_lr must be >= 0, got -0.01``;
``net.prototxt:12:5: layer "conv1" (Convolution): convolution_param.num_output must be > 0``.
Rules follow Caffe's own CHECKs (solver.cpp, sgd_solvers.cpp, the layers' LayerSetUp), so a
file Caffe accepts passes here; what Caffe would only find hours into training (a multistep
schedule without steps) or never (momentum 1.5) is refused at once.
"""

from __future__ import annotations

from pathlib import Path

from netforge import netforge_pb2 as pb
from netforge.config.locate import locate
from netforge.errors import ConfigError

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


class _Where:
    """Turns a field path into ``file:line:col`` (reading the text only when needed)."""

    def __init__(self, source: str, text: str | None = None):
        self.source = source
        self._text = text

    def text(self) -> str | None:
        if self._text is None and self.source and Path(self.source).is_file():
            try:
                self._text = Path(self.source).read_text()
            except (OSError, UnicodeDecodeError):
                self._text = ""
        return self._text

    def __call__(self, path) -> str:
        text = self.text()
        spot = locate(text, path) if text else None
        return f"{self.source}:{spot[0]}:{spot[1]}" if spot else self.source


# -- solver ----------------------------------------------------------------------------------


def validate_solver(solver: pb.SolverParameter, source: str = "<solver>",
                    text: str | None = None) -> None:
    """Refuse a SolverParameter Caffe would reject, or that cannot mean what it says."""
    where = _Where(source, text)

    def fail(field: str, message: str, index: int = 0):
        raise ConfigError(f"{where([(field, index)])}: {message}")

    def at_least(field: str, low, strict: bool = False, when=True):
        value = getattr(solver, field)
        if when and (value <= low if strict else value < low):
            fail(field, f"{field} must be {'>' if strict else '>='} {low}, got {value:g}")

    at_least("base_lr", 0)
    at_least("weight_decay", 0)
    at_least("iter_size", 1)
    at_least("average_loss", 1)
    at_least("max_iter", 0)
    at_least("display", 0)
    at_least("snapshot", 0)
    at_least("test_interval", 0)
    if not 0 <= solver.momentum < 1:
        fail("momentum", f"momentum must be in [0, 1), got {solver.momentum:g}")
    for k, value in enumerate(solver.test_iter):
        if value <= 0:
            fail("test_iter", f"test_iter must be > 0, got {value}", k)
    if solver.test_interval > 0 and not solver.test_iter and not (
            solver.test_net or solver.test_net_param):
        fail("test_interval", "test_interval is set but no test_iter says how many batches "
                              "a test runs; add test_iter (one per test net) or drop "
                              "test_interval")
    if solver.type not in SOLVER_TYPES:
        fail("type", f'unknown solver type "{solver.type}"; known: {", ".join(SOLVER_TYPES)}')
    if solver.regularization_type not in ("L1", "L2"):
        fail("regularization_type", 'regularization_type must be "L1" or "L2", got '
                                    f'"{solver.regularization_type}"')
    _validate_lr_policy(solver, fail)
    if solver.type in ("AdaDelta", "Adam", "AdaGrad", "RMSProp"):
        at_least("delta", 0, strict=True)
    if solver.type == "Adam" and not 0 <= solver.momentum2 < 1:
        fail("momentum2", f"momentum2 must be in [0, 1), got {solver.momentum2:g}")
    if solver.type == "RMSProp" and not 0 <= solver.rms_decay < 1:
        fail("rms_decay", f"rms_decay must be in [0, 1), got {solver.rms_decay:g}")
    if solver.type in ("AdaGrad", "RMSProp") and solver.momentum != 0:
        fail("momentum", f"{solver.type} does not use momentum (Caffe refuses it); "
                         "set momentum: 0")


def _validate_lr_policy(solver: pb.SolverParameter, fail) -> None:
    policy = solver.lr_policy or "fixed"
    if policy not in LR_POLICIES:
        fail("lr_policy", f'unknown lr_policy "{policy}"; known: {", ".join(LR_POLICIES)}')
    if policy in ("step", "sigmoid") and solver.stepsize <= 0:
        fail("stepsize" if solver.HasField("stepsize") else "lr_policy",
             f'lr_policy "{policy}" needs stepsize > 0, got {solver.stepsize}')
    if policy == "multistep":
        if not solver.stepvalue:
            fail("lr_policy", 'lr_policy "multistep" needs at least one stepvalue')
        for k in range(1, len(solver.stepvalue)):
            if solver.stepvalue[k] <= solver.stepvalue[k - 1]:
                fail("stepvalue", "stepvalue must increase: "
                                  f"{solver.stepvalue[k - 1]} then {solver.stepvalue[k]}", k)
    if policy == "poly" and solver.max_iter <= 0:
        fail("lr_policy", 'lr_policy "poly" needs max_iter > 0')
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and not solver.HasField("gamma"):
        fail("lr_policy", f'lr_policy "{policy}" needs gamma')
    if policy in ("inv", "poly") and not solver.HasField("power"):
        fail("lr_policy", f'lr_policy "{policy}" needs power')


# -- nets ------------------------------------------------------------------------------------


def validate_net(net: pb.NetParameter, source: str = "<net>", text: str | None = None,
                 layer_field: str = "layer", first_in_file: int = 0) -> None:
    """Refuse layer parameters out of range, missing or contradicting each other.

    ``layer_field`` is the name the file used for its layers (``layers`` in V1 files), so the
    line found is the user's even after the upgrade; ``first_in_file`` is the index of the
    first layer written in the file (layers before it came from an input header)."""
    where = _Where(source, text)
    for index, layer in enumerate(net.layer):
        def fail(path, message, index=index - first_in_file, layer=layer):
            fields = [(layer_field, index), *[(name, 0) for name in path]]
            location = where(fields if index >= 0 else [("input", 0)])
            raise ConfigError(f'{location}: layer "{layer.name}" ({layer.type}): {message}')

        _check_layer(layer, fail)


def _positive(fail, message_name: str, path, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        sign = ">= 0" if allow_zero else "> 0"
        fail(path, f"{message_name} must be {sign}, got {value:g}")


def _check_layer(layer: pb.LayerParameter, fail) -> None:
    kind = layer.type
    for k, spec in enumerate(layer.param):
        if spec.decay_mult < 0:
            fail(["param"], f"param {k} decay_mult must be >= 0, got {spec.decay_mult:g}")
    if len(layer.loss_weight) > len(layer.top):
        fail(["loss_weight"], f"{len(layer.loss_weight)} loss_weight value(s) for "
                              f"{len(layer.top)} top(s)")
    if layer.HasField("transform_param"):
        _check_transform(layer.transform_param, fail)
    check = _LAYER_RULES.get(kind)
    if check is not None:
        check(layer, fail)


def _check_transform(t: pb.TransformationParameter, fail) -> None:
    if t.HasField("mean_file") and len(t.mean_value):
        fail(["transform_param", "mean_value"],
             "transform_param: give mean_file or mean_value, not both (Caffe refuses both)")
    if t.scale <= 0:
        fail(["transform_param", "scale"], f"transform_param.scale must be > 0, got {t.scale:g}")


def _check_convolution(layer, fail) -> None:
    p = layer.convolution_param
    name = "convolution_param"
    if p.num_output <= 0:
        fail([name, "num_output"], f"{name}.num_output must be > 0, got {p.num_output}")
    has_kernel = len(p.kernel_size) or (p.HasField("kernel_h") and p.HasField("kernel_w"))
    if not has_kernel:
        fail([name], f"{name} needs kernel_size (or kernel_h and kernel_w)")
    for field in ("kernel_size", "stride", "dilation"):
        for value in getattr(p, field):
            _positive(fail, f"{name}.{field}", [name, field], value)
    for field in ("kernel_h", "kernel_w", "stride_h", "stride_w"):
        if p.HasField(field):
            _positive(fail, f"{name}.{field}", [name, field], getattr(p, field))
    if p.group <= 0 or p.num_output % p.group:
        fail([name, "group"], f"{name}.group ({p.group}) must be > 0 and divide num_output "
                              f"({p.num_output})")


def _check_pooling(layer, fail) -> None:
    p = layer.pooling_param
    name = "pooling_param"
    has_kernel = p.HasField("kernel_size") or (p.HasField("kernel_h") and p.HasField("kernel_w"))
    if not p.global_pooling and not has_kernel:
        fail([name], f"{name} needs kernel_size (or kernel_h and kernel_w) unless "
                     "global_pooling")
    for field in ("kernel_size", "stride", "kernel_h", "kernel_w", "stride_h", "stride_w"):
        if p.HasField(field):
            _positive(fail, f"{name}.{field}", [name, field], getattr(p, field))


def _check_inner_product(layer, fail) -> None:
    p = layer.inner_product_param
    if p.num_output <= 0:
        fail(["inner_product_param", "num_output"],
             f"inner_product_param.num_output must be > 0, got {p.num_output}")


def _check_dropout(layer, fail) -> None:
    ratio = layer.dropout_param.dropout_ratio
    if not 0 <= ratio < 1:
        fail(["dropout_param", "dropout_ratio"],
             f"dropout_param.dropout_ratio must be in [0, 1), got {ratio:g}")


def _check_lrn(layer, fail) -> None:
    size = layer.lrn_param.local_size
    if size <= 0 or size % 2 == 0:
        fail(["lrn_param", "local_size"], f"lrn_param.local_size must be odd and > 0, got {size}")


def _check_batch_sources(param_name: str, needs_source: bool = True):
    def check(layer, fail):
        p = getattr(layer, param_name)
        if needs_source and not p.source:
            fail([param_name], f"{param_name}.source is required")
        if p.batch_size <= 0:
            fail([param_name, "batch_size"], f"{param_name}.batch_size must be > 0, got "
                                             f"{p.batch_size}")
    return check


def _check_input(layer, fail) -> None:
    for k, shape in enumerate(layer.input_param.shape):
        if any(d < 0 for d in shape.dim):
            fail(["input_param", "shape"], f"input_param.shape {k} has a negative dimension: "
                                           f"{list(shape.dim)}")


def _check_eltwise(layer, fail) -> None:
    p = layer.eltwise_param
    if len(p.coeff) and p.operation != pb.EltwiseParameter.SUM:
        fail(["eltwise_param", "coeff"], "eltwise_param.coeff applies to operation SUM only")
    if len(p.coeff) and len(p.coeff) != len(layer.bottom):
        fail(["eltwise_param", "coeff"], f"{len(p.coeff)} eltwise_param.coeff value(s) for "
                                         f"{len(layer.bottom)} bottoms")


def _check_batch_norm(layer, fail) -> None:
    p = layer.batch_norm_param
    if p.eps <= 0:
        fail(["batch_norm_param", "eps"], f"batch_norm_param.eps must be > 0, got {p.eps:g}")
    if not 0 <= p.moving_average_fraction <= 1:
        fail(["batch_norm_param", "moving_average_fraction"],
             "batch_norm_param.moving_average_fraction must be in [0, 1], got "
             f"{p.moving_average_fraction:g}")


def _check_slice(layer, fail) -> None:
    points = list(layer.slice_param.slice_point)
    if any(b <= a for a, b in zip(points, points[1:], strict=False)) or any(p <= 0
                                                                             for p in points):
        fail(["slice_param", "slice_point"], f"slice_param.slice_point must be positive and "
                                             f"increasing, got {points}")


_LAYER_RULES = {
    "Convolution": _check_convolution,
    "Deconvolution": _check_convolution,
    "Pooling": _check_pooling,
    "InnerProduct": _check_inner_product,
    "Dropout": _check_dropout,
    "LRN": _check_lrn,
    "Data": _check_batch_sources("data_param"),
    "ImageData": _check_batch_sources("image_data_param"),
    "HDF5Data": _check_batch_sources("hdf5_data_param"),
    "Input": _check_input,
    "Eltwise": _check_eltwise,
    "BatchNorm": _check_batch_norm,
    "Slice": _check_slice,
}

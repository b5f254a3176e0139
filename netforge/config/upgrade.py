"""Bringing nets and solvers of older formats up to date, in Caffe's order (UpgradeNetAsNeeded).

The V0/V1 ``layers`` forms live in ``legacy``; this module adds the input header, fork aliases,
deprecated transform fields and the solver's ``solver_type`` enum.
"""

from __future__ import annotations

import copy
import logging

from netforge import netforge_pb2 as pb
from netforge.config import legacy
from netforge.errors import ConfigError

log = logging.getLogger("netforge")

def upgrade_net(net: pb.NetParameter, source: str = "net") -> pb.NetParameter:
    """Bring legacy forms up to date, in Caffe's order (UpgradeNetAsNeeded): V0/V1 ``layers``
    → ``layer``, input header → Input layer, old BatchNorm param specs; plus fork aliases."""
    if legacy.upgrade_legacy_net(net, source):
        log.info("%s: upgraded from the deprecated V0/V1 `layers` form", source)
    _upgrade_input_header(net, source)
    legacy.upgrade_batch_norm_params(net)
    for layer in net.layer:
        _upgrade_layer(layer)
    return net


def _upgrade_input_header(net: pb.NetParameter, source: str) -> None:
    """``input:``/``input_dim:``/``input_shape:`` become a first layer named "input"."""
    if not net.input:
        if net.input_dim or net.input_shape:
            raise ConfigError(f"{source}: input_dim/input_shape given without input names")
        return
    shapes = []
    if net.input_shape:
        if len(net.input_shape) not in (1, len(net.input)):
            raise ConfigError(
                f"{source}: {len(net.input)} inputs but {len(net.input_shape)} input_shape entries"
            )
        shapes = [list(s.dim) for s in net.input_shape]
    elif net.input_dim:
        dims = list(net.input_dim)
        if len(dims) != 4 * len(net.input):
            raise ConfigError(
                f"{source}: input_dim must give 4 values per input "
                f"({len(net.input)} inputs, {len(dims)} values)"
            )
        shapes = [dims[4 * i : 4 * i + 4] for i in range(len(net.input))]
    else:
        raise ConfigError(f"{source}: input {list(net.input)} has no input_shape or input_dim")
    layer = pb.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    for dims in shapes:
        layer.input_param.shape.add().dim.extend(dims)
    layers = [layer] + [copy.deepcopy(existing) for existing in net.layer]
    del net.layer[:]
    net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")


def _upgrade_layer(layer: pb.LayerParameter) -> None:
    if layer.HasField("pooling_param"):
        pool = layer.pooling_param
        # A Caffe fork spells FLOOR rounding as ``ceil_mode: false``.
        if pool.HasField("ceil_mode") and not pool.HasField("round_mode"):
            pool.round_mode = pb.PoolingParameter.CEIL if pool.ceil_mode else (
                pb.PoolingParameter.FLOOR
            )
    if layer.type == "Data" and layer.HasField("data_param"):
        # The deprecated data_param transform fields live in transform_param now.
        data = layer.data_param
        transform = layer.transform_param
        if data.HasField("scale") and not transform.HasField("scale"):
            transform.scale = data.scale
        if data.HasField("mean_file") and not transform.HasField("mean_file"):
            transform.mean_file = data.mean_file
        if data.HasField("crop_size") and not transform.HasField("crop_size"):
            transform.crop_size = data.crop_size
        if data.HasField("mirror") and not transform.HasField("mirror"):
            transform.mirror = data.mirror


SOLVER_TYPE_NAMES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]



def upgrade_solver_param(solver: pb.SolverParameter) -> pb.SolverParameter:
    """The deprecated enum ``solver_type`` wins only when ``type`` was left at its default."""
    if solver.HasField("solver_type") and not solver.HasField("type"):
        solver.type = SOLVER_TYPE_NAMES[solver.solver_type]
    return solver

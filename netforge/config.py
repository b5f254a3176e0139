"""Reading nets and solvers: text/binary protobuf, legacy upgrades, NetState filtering.

Errors point at the file: ``lenet.prototxt:12:5: unknown field "kernal_size" in
ConvolutionParameter``.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from netforge import legacy
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, DataError
from netforge.fileio import resolve_file

log = logging.getLogger("netforge")

PHASES = {"TRAIN": pb.TRAIN, "TEST": pb.TEST}
PHASE_NAMES = {pb.TRAIN: "TRAIN", pb.TEST: "TEST"}

_NO_FIELD = re.compile(r'Message type "(?:\w+\.)*(\w+)" has no field named "([^"]+)"')
_LOCATION = re.compile(r"^(\d+):(\d+)\s*:\s*")


def _explain_parse_error(message: str) -> str:
    """Protobuf's text-format complaint rewritten in netforge's words."""
    match = _NO_FIELD.search(message)
    if match:
        return f'unknown field "{match.group(2)}" in {match.group(1)}'
    return message.rstrip(".")


def parse_text(text: str, message, source: str = "<string>"):
    """Parse protobuf text ``text`` into ``message``; errors cite ``source:line:col``."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raw = str(exc)
        line, col = exc.GetLine(), exc.GetColumn()
        raw = _LOCATION.sub("", raw)
        where = f"{source}:{line}:{col}" if line is not None else source
        raise ConfigError(f"{where}: {_explain_parse_error(raw)}") from None
    return message


def read_text(path, message):
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as text ({exc})") from None
    return parse_text(text, message, str(path))


def read_binary(path, message, what: str = "file"):
    """Parse a binary protobuf (``.caffemodel``, ``.binaryproto``, ``.solverstate``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise DataError(f"{path}: damaged or truncated {what} ({exc})") from None
    return message


# -- nets ------------------------------------------------------------------------------------


def load_net_param(path) -> pb.NetParameter:
    """A NetParameter from a prototxt file, with legacy forms upgraded."""
    net = read_text(path, pb.NetParameter())
    return upgrade_net(net, str(path))


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


# -- NetState filtering ----------------------------------------------------------------------


def make_state(phase: str = "TEST", level: int = 0, stages=()) -> pb.NetState:
    if phase not in PHASES:
        raise ConfigError(f'phase must be TRAIN or TEST, got "{phase}"')
    state = pb.NetState(phase=PHASES[phase], level=level)
    state.stage.extend(s for s in stages if s)
    return state


def state_meets_rule(state: pb.NetState, rule: pb.NetStateRule) -> bool:
    """Caffe's NetStateRule match: phase, level range, all stages, none of not_stages."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def filter_net(net: pb.NetParameter, state: pb.NetState, source: str = "net") -> pb.NetParameter:
    """A copy of ``net`` keeping only the layers whose include/exclude rules admit ``state``."""
    kept = pb.NetParameter()
    kept.CopyFrom(net)
    del kept.layer[:]
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise ConfigError(
                f'{source}: layer "{layer.name}" has both include and exclude rules; '
                "specify one or the other"
            )
        if layer.include:
            keep = any(state_meets_rule(state, rule) for rule in layer.include)
        else:
            keep = not any(state_meets_rule(state, rule) for rule in layer.exclude)
        if keep:
            kept.layer.add().CopyFrom(layer)
    kept.state.CopyFrom(state)
    return kept


# -- solvers ---------------------------------------------------------------------------------

SOLVER_TYPE_NAMES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]


def load_solver_param(path) -> pb.SolverParameter:
    return upgrade_solver_param(read_text(path, pb.SolverParameter()))


def upgrade_solver_param(solver: pb.SolverParameter) -> pb.SolverParameter:
    """The deprecated enum ``solver_type`` wins only when ``type`` was left at its default."""
    if solver.HasField("solver_type") and not solver.HasField("type"):
        solver.type = SOLVER_TYPE_NAMES[solver.solver_type]
    return solver


def solver_net_params(solver: pb.SolverParameter, solver_path) -> tuple:
    """(train NetParameter, [test NetParameter...], base dir) from the solver's net fields.

    Exactly one of net, net_param, train_net, train_net_param names the train net; test nets
    come from test_net/test_net_param, or, with net/net_param, one per test_iter entry.
    """
    base = Path(solver_path).resolve().parent if solver_path else Path.cwd()
    fields = ("net", "net_param", "train_net", "train_net_param")
    sources = [f for f in fields if solver.HasField(f)]
    if len(sources) != 1:
        raise ConfigError(
            f"{solver_path}: the solver must name exactly one train net "
            f"(net, net_param, train_net or train_net_param); found {sources or 'none'}"
        )

    def load(field_value, is_file: bool):
        if is_file:
            path = resolve_file(field_value, base)
            return load_net_param(path), path.resolve().parent
        net = pb.NetParameter()
        net.CopyFrom(field_value)
        return upgrade_net(net, str(solver_path)), base

    field = sources[0]
    train, net_dir = load(getattr(solver, field), field in ("net", "train_net"))
    tests = [load(t, True)[0] for t in solver.test_net]
    tests += [load(t, False)[0] for t in solver.test_net_param]
    if field in ("net", "net_param"):
        extra = len(solver.test_iter) - len(tests)
        tests += [train] * max(extra, 0)
    if len(solver.test_iter) != len(tests):
        raise ConfigError(
            f"{solver_path}: {len(tests)} test net(s) but {len(solver.test_iter)} "
            "test_iter value(s)"
        )
    if tests and solver.test_interval <= 0:
        raise ConfigError(f"{solver_path}: test_interval must be > 0 when test nets are given")
    if len(solver.test_state) not in (0, len(tests)):
        raise ConfigError(
            f"{solver_path}: {len(solver.test_state)} test_state entries for {len(tests)} test nets"
        )
    return train, tests, net_dir

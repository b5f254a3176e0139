"""Loading nets and solvers from their files: parse, then upgrade; the solver's net fields."""

from __future__ import annotations

from pathlib import Path

from netforge import netforge_pb2 as pb
from netforge.config.text import read_text
from netforge.config.upgrade import upgrade_net, upgrade_solver_param
from netforge.config.validate import validate_net, validate_solver
from netforge.errors import ConfigError
from netforge.files import resolve_file


def load_net_param(path) -> pb.NetParameter:
    """A NetParameter from a prototxt file, with legacy forms upgraded."""
    net = read_text(path, pb.NetParameter())
    layer_field = "layers" if len(net.layers) and not len(net.layer) else "layer"
    written = len(getattr(net, layer_field))
    net = upgrade_net(net, str(path))
    # An input header becomes Input layers in front: the file's layers start after them.
    validate_net(net, str(path), layer_field=layer_field, first_in_file=len(net.layer) - written)
    return net


def load_solver_param(path) -> pb.SolverParameter:
    try:
        solver = read_text(path, pb.SolverParameter())
    except ConfigError as exc:
        raise ConfigError(f"{exc}{_net_not_solver_hint(path)}") from None
    solver = upgrade_solver_param(solver)
    validate_solver(solver, str(path))
    return solver


def _net_not_solver_hint(path) -> str:
    """A hint when the file given as a solver is a net prototxt (a common slip)."""
    try:
        net = read_text(path, pb.NetParameter())
    except ConfigError:
        return ""
    if len(net.layer) or len(net.layers):
        return " (this file is a net, not a solver: give the solver prototxt that names it)"
    return ""


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
        net = upgrade_net(net, str(solver_path))
        validate_net(net, str(solver_path))  # lines are not located inside an inline net
        return net, base

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

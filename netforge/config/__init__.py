"""Nets and solvers from their files: parse (``text``), upgrade older formats (``upgrade``,
``legacy``), filter by NetState (``netstate``); ``loading`` puts them together."""

from netforge.config.loading import load_net_param, load_solver_param, solver_net_params
from netforge.config.netstate import PHASE_NAMES, PHASES, filter_net, make_state, state_meets_rule
from netforge.config.text import parse_text, read_binary, read_text
from netforge.config.upgrade import SOLVER_TYPE_NAMES, upgrade_net, upgrade_solver_param
from netforge.config.validate import validate_net, validate_solver

__all__ = [
    "PHASES", "PHASE_NAMES", "SOLVER_TYPE_NAMES", "filter_net", "load_net_param",
    "load_solver_param", "make_state", "parse_text", "read_binary", "read_text",
    "solver_net_params", "state_meets_rule", "upgrade_net", "upgrade_solver_param",
    "validate_net", "validate_solver",
]

"""Writing a net or solver text file back in today's format (``netforge upgrade``).

Nets: V0/V1 ``layers`` → ``layer``, the input header → an Input layer, deprecated data
transform fields → transform_param (``upgrade``/``legacy``). Solvers: the ``solver_type``
enum → the ``type`` string. (Binary .caffemodel files are upgraded by ``weights``.)
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from netforge import netforge_pb2 as pb
from netforge.config.loading import load_net_param, load_solver_param
from netforge.config.text import read_text
from netforge.errors import ConfigError
from netforge.files import atomic_write_bytes


def upgrade_text_file(source, dest) -> str:
    """Upgrade the text file ``source`` into ``dest``; returns "net" or "solver"."""
    source, dest = Path(source), Path(dest)
    try:
        read_text(source, pb.NetParameter())
        kind = "net"
    except ConfigError as net_error:
        try:
            read_text(source, pb.SolverParameter())
            kind = "solver"
        except ConfigError:
            raise net_error from None
    if kind == "net":
        message = load_net_param(source)
    else:
        message = load_solver_param(source)
        message.ClearField("solver_type")  # its meaning now lives in `type`
    atomic_write_bytes(dest, text_format.MessageToString(message).encode())
    return kind

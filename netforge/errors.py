"""Typed errors: what went wrong, where, what was expected and what was found.

The CLI turns any ``NetforgeError`` into one line and exit code 2 (bad input) or 1 (a run that
failed); the library never calls ``sys.exit`` and never uses bare ``assert`` for user input.
"""

from __future__ import annotations


class NetforgeError(Exception):
    """Base class. ``exit_code`` is what the CLI returns for it."""

    exit_code = 2


class ConfigError(NetforgeError):
    """A prototxt/solver/weights file that does not parse or breaks a rule of the schema."""


class GraphError(NetforgeError):
    """A net whose wiring is wrong: missing bottom, duplicate top, bad blob counts."""


class ShapeError(NetforgeError):
    """Shapes that do not fit; the message names layer, blob and both shapes."""


class UnknownLayerTypeError(ConfigError):
    """A layer ``type`` that is not registered."""


class DataError(NetforgeError):
    """A dataset, image list, mean file or image that cannot be read as expected."""


class DeviceError(NetforgeError):
    """A GPU was asked for but none is usable (no CuPy, no device, bad id)."""


class RunError(NetforgeError):
    """A run that failed after starting: I/O while snapshotting, divergence, interruption."""

    exit_code = 1


class OutOfMemoryError(RunError):
    """Memory ran out (a batch or input too large for the host or the GPU)."""


class DivergenceError(RunError):
    """Training produced a NaN or Inf."""


def layer_label(layer_type: str, name: str) -> str:
    """``Convolution "conv1"`` — how errors name a layer."""
    return f'{layer_type} "{name}"'

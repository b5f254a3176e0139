"""Layer catalogue. Importing this package registers every layer family."""

from netforge.layers.registry import layer_class, layer_types, register

# Family modules register their layers on import.
from netforge.layers import common, data, loss, neuron, vision  # noqa: E402,F401  isort: skip

__all__ = ["layer_class", "layer_types", "register"]

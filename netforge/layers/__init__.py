"""Layer catalogue. Importing this package registers every layer family."""

from netforge.layers.registry import layer_class, layer_types, register

# Family modules register their layers on import.
from netforge.layers import (  # noqa: E402,F401  isort: skip
    common,
    data,
    distillation,
    loss,
    neuron,
    normalization,
    python_layer,
    recurrent,
    structure,
    vision,
)

__all__ = ["layer_class", "layer_types", "register"]

"""Layer catalogue. Importing this package registers every layer family.

It is also pycaffe's ``layers`` pseudo-module: ``from netforge import layers as L`` then
``L.Convolution(n.data, num_output=20, kernel_size=5)`` builds a NetSpec layer. CamelCase
attribute names (layer types) go to ``netspec.layer_function``; the lower-case names are the
implementation modules, so the two never collide.
"""

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


def __getattr__(name: str):
    if name[:1].isupper():
        from netforge.layers.netspec import layer_function

        return layer_function(name)
    raise AttributeError(f"module 'netforge.layers' has no attribute {name!r}")


__all__ = ["layer_class", "layer_types", "register"]

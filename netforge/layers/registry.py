"""Caffe type string -> layer class. ``@register("InnerProduct")`` sits on the class."""

from __future__ import annotations

from netforge.errors import ConfigError, UnknownLayerTypeError

_REGISTRY: dict[str, type] = {}


def register(type_name: str):
    """Class decorator registering a layer under its Caffe type string."""

    def decorate(cls):
        if type_name in _REGISTRY:
            raise ConfigError(f'layer type "{type_name}" is already registered')
        _REGISTRY[type_name] = cls
        cls.type = type_name
        return cls

    return decorate


def layer_types() -> list[str]:
    return sorted(_REGISTRY)


def layer_class(type_name: str, layer_name: str = ""):
    try:
        return _REGISTRY[type_name]
    except KeyError:
        where = f' (layer "{layer_name}")' if layer_name else ""
        raise UnknownLayerTypeError(
            f'unknown layer type "{type_name}"{where}; known types: {", ".join(layer_types())}'
        ) from None

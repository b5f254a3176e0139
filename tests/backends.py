"""The array modules a table of tests runs on: numpy always, CuPy under the ``gpu`` marker
(tests/conftest.py skips those where no GPU is usable), and the counting stand-in device of
tests/device_shim.py ("shim"): CuPy's code paths (``xp is not numpy``) on any machine."""

from __future__ import annotations

import importlib

import pytest

ARRAY_MODULES = [pytest.param("numpy", id="numpy"),
                 pytest.param("shim", id="shim"),
                 pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]


def load(name: str):
    """The module named by an ARRAY_MODULES parameter."""
    if name == "shim":
        from tests import device_shim

        return device_shim.module
    return importlib.import_module(name)


def host(array):
    """A numpy copy of a numpy or CuPy array."""
    get = getattr(array, "get", None)
    return get() if get is not None else array

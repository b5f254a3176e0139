"""A stand-in compute device that counts every read back to the host.

``DeviceArray`` is a numpy array that behaves as a CuPy array does where it matters here:
results of ufuncs, reductions and numpy functions stay DeviceArrays (a reduction gives a 0-d
array, not a Python scalar), and every conversion a CUDA device would have to synchronise
for — ``float()``, ``int()``, ``bool()``, ``operator.index``, ``.item()``, ``.tolist()``,
formatting, ``.get()`` (what ``backend.to_host`` calls) — is recorded with the code that
asked. ``module`` is the array module (``backend.use_array_module(module)``): numpy, with
the creation functions returning DeviceArrays.

Not seen: ``numpy.asarray(device_array)`` (numpy never asks an ndarray subclass), so the
package reads device arrays only through ``backend.to_host``, as it must for CuPy anyway.
"""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np

from netforge import backend


class Reads:
    """The recorded reads: (what, the innermost netforge function and its caller)."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.enabled = True

    def record(self, what: str) -> None:
        if not self.enabled:
            return
        frame, where = sys._getframe(2), []
        while frame is not None and len(where) < 2:
            name = frame.f_code.co_filename
            if "/netforge/" in name and "/tests/" not in name:
                where.append(f"{name.split('/netforge/')[-1]}:{frame.f_code.co_name}")
            frame = frame.f_back
        self.events.append((what, " < ".join(where) or "outside netforge"))

    def clear(self) -> None:
        self.events.clear()


READS = Reads()


def _plain(value):
    if isinstance(value, DeviceArray):
        return value.view(np.ndarray)
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def _device(value):
    if isinstance(value, DeviceArray):
        return value
    if isinstance(value, np.ndarray):
        return value.view(DeviceArray)
    if isinstance(value, (np.generic, bool, int, float)) and not isinstance(value, np.str_):
        return np.asarray(value).view(DeviceArray)  # a 0-d array, as CuPy returns
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    return value


class DeviceArray(np.ndarray):
    netforge_array_module = None  # set below: the shim module

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        if "where" in kwargs:
            kwargs["where"] = _plain(kwargs["where"])
        result = getattr(ufunc, method)(*_plain(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __array_function__(self, func, types_, args, kwargs):
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        result = func(*_plain(args), **kwargs)
        if "out" in kwargs and kwargs["out"] is not None:
            return result  # the caller's out (plain view of a DeviceArray)
        return _device(result)

    def __getitem__(self, key):
        return _device(super().__getitem__(_plain(key)))

    def __setitem__(self, key, value):
        super().__setitem__(_plain(key), _plain(value))

    # -- the reads a device must synchronise for ------------------------------------------
    def __float__(self):
        READS.record("float")
        return float(self.view(np.ndarray))

    def __int__(self):
        READS.record("int")
        return int(self.view(np.ndarray))

    def __index__(self):
        READS.record("index")
        return self.view(np.ndarray).__index__()

    def __bool__(self):
        READS.record("bool")
        return bool(self.view(np.ndarray))

    def __format__(self, spec):
        READS.record("format")
        return format(self.view(np.ndarray), spec)

    def item(self, *args):
        READS.record("item")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        READS.record("tolist")
        return self.view(np.ndarray).tolist()

    def get(self):
        READS.record("get")
        return self.view(np.ndarray).copy()


def _creating(name):
    make = getattr(np, name)

    def create(*args, **kwargs):
        return _device(make(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))

    create.__name__ = name
    return create


module = types.ModuleType("device_shim_xp")
module.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
for _name in ("empty", "zeros", "ones", "full", "arange", "asarray", "array",
              "ascontiguousarray", "empty_like", "zeros_like", "ones_like", "full_like",
              "frombuffer", "linspace", "eye"):
    setattr(module, _name, _creating(_name))
module.ndarray = DeviceArray
DeviceArray.netforge_array_module = module


@contextlib.contextmanager
def device():
    """Run with the shim as the compute device; yields READS (cleared)."""
    backend.use_array_module(module)
    READS.clear()
    try:
        yield READS
    finally:
        backend.use_array_module(None)

"""The ``Python`` layer: a user class, named in the prototxt, run with pycaffe's conventions.

    layer { name: "loss" type: "Python" bottom: "x" bottom: "y" top: "loss"
            python_param { module: "mylayers" layer: "EuclideanLoss" param_str: "..." }
            loss_weight: 1 }

``module`` is imported from ``sys.path`` or, failing that, from the net file's folder (so a
``mylayers.py`` beside the prototxt works); ``layer`` names a class in it. The instance gets
``param_str``, ``phase`` ("train" or "test", as ``netforge.TRAIN``/``netforge.TEST``) and
``blobs`` (its learnable parameters: ``self.blobs.add_blob(*shape)`` in setup), and is called
as pycaffe calls it:

    setup(bottom, top)      once, while the net is built
    reshape(bottom, top)    while the net is built, then before every forward (as Caffe
                            does); set each top's shape with ``top[i].reshape(*shape)``
    forward(bottom, top)    write ``top[i].data[...]``
    backward(top, propagate_down, bottom)   write ``bottom[i].diff[...]``

Each blob has ``data``, ``diff``, ``shape``, ``count``, ``num``/``channels``/``height``/
``width`` and ``reshape``. netforge allocates buffers before the first batch, so while the
net is built setup and reshape see stand-in blobs of the right shapes (filled with zeros);
forward and backward see the net's own blobs. A top whose shape the user's reshape changes
at run time makes the net reshape the layers after it. Like Caffe, a Python layer gets a
loss weight only from ``loss_weight`` in the prototxt.

Loading a net never runs code by itself: a Python layer imports a module the *file* names,
so it is refused unless the user allowed Python layers — ``--allow-python-layers`` on the
command line, ``netforge.allow_python_layers()`` (the process), ``Net(...,
allow_python_layers=True)`` (one net) or ``NETFORGE_ALLOW_PYTHON_LAYERS=1``. Frozen models
follow the same rule.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import os
import sys

from netforge import netforge_pb2 as pb
from netforge.blob import Blob
from netforge.errors import ConfigError, NetforgeError
from netforge.layers.base import Layer
from netforge.layers.registry import register

_PROCESS_ALLOWS = {"python_layers": False}
_NET_ALLOWS: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "netforge_allow_python_layers", default=None)
ENV_ALLOW = "NETFORGE_ALLOW_PYTHON_LAYERS"


def allow_python_layers(allowed: bool = True) -> None:
    """Let nets built from now on in this process run their Python layers' modules."""
    _PROCESS_ALLOWS["python_layers"] = bool(allowed)


def python_layers_allowed() -> bool:
    """Whether a Python layer may import its module now: the innermost ``allowing`` block,
    else the process setting, else the environment variable."""
    value = _NET_ALLOWS.get()
    if value is not None:
        return value
    if _PROCESS_ALLOWS["python_layers"]:
        return True
    return os.environ.get(ENV_ALLOW, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def allowing(allowed: bool | None):
    """Within the block, Python layers are allowed (True), refused (False), or follow the
    process setting (None): how ``Net(allow_python_layers=...)`` scopes its choice."""
    token = _NET_ALLOWS.set(allowed)
    try:
        yield
    finally:
        _NET_ALLOWS.reset(token)


def refusal(label: str, module: str) -> str:
    return (f'{label} would import and run python_param.module "{module}", code named by the '
            "file; netforge runs Python layers only when allowed: --allow-python-layers, "
            f"netforge.allow_python_layers(), Net(..., allow_python_layers=True) or {ENV_ALLOW}=1")


class UserLayer:
    """An optional base for user layers (the role of pycaffe's ``caffe.Layer``): it accepts
    the LayerParameter and defines every hook as doing nothing."""

    def __init__(self, param=None):
        self.layer_param = param

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class ParamBlobs(list):
    """The layer's parameter blobs, as the user sees them (``self.blobs``)."""

    def __init__(self, layer: Layer):
        super().__init__()
        self._layer = layer

    def add_blob(self, *shape) -> Blob:
        """Append a learnable blob of ``shape`` (zeros; set its ``data`` in setup)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self._layer.add_param(tuple(int(d) for d in shape), pb.FillerParameter())


class _StandInBlob(Blob):
    """A blob used while the net is built; remembers whether user code gave it a shape."""

    __slots__ = ("was_reshaped",)

    def __init__(self, shape, dtype, xp):
        super().__init__(shape, dtype, xp)
        self.was_reshaped = False

    def reshape(self, *shape) -> None:
        super().reshape(*shape)
        self.was_reshaped = True


def _import(module_name: str, base_dirs, label: str):
    """Import ``module_name`` from sys.path, then from ``base_dirs`` (the net file's folder).

    The folders are on sys.path only during the import; a user module that imports its
    siblings should do so at import time.
    """
    extra = [str(d) for d in base_dirs if str(d) not in sys.path]
    sys.path.extend(extra)
    importlib.invalidate_caches()  # a module written moments ago must be seen
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        where = ", ".join(["sys.path", *extra])
        raise ConfigError(f'{label}: cannot import python_param.module "{module_name}" '
                          f"(looked in {where}): {exc}") from exc
    except Exception as exc:  # a bug in the user's module, at import time
        raise ConfigError(f'{label}: importing python_param.module "{module_name}" failed: '
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        for d in extra:
            sys.path.remove(d)


def _instantiate(cls, param, label: str):
    """``cls(param)`` as pycaffe does, or ``cls()`` for a class whose constructor takes no
    argument (a plain class that does not derive from UserLayer)."""
    try:
        inspect.signature(cls).bind(param)
        args = (param,)
    except (TypeError, ValueError):
        args = ()
    try:
        return cls(*args)
    except Exception as exc:
        raise ConfigError(f"{label}: creating {cls.__name__} failed: "
                          f"{type(exc).__name__}: {exc}") from exc


@register("Python")
class PythonLayer(Layer):
    """Runs a user class (see the module docstring)."""

    min_bottoms = 0
    min_tops = 0
    # The user's reshape runs before each forward and may change the tops' shapes.
    dynamic_top_shapes = True

    def __init__(self, param, ctx):
        super().__init__(param, ctx)
        p = param.python_param
        if not p.module or not p.layer:
            raise ConfigError(f"{self.label}: python_param needs both module and layer")
        if not python_layers_allowed():
            raise ConfigError(refusal(self.label, p.module))
        module = _import(p.module, ctx.base_dirs, self.label)
        cls = getattr(module, p.layer, None)
        if cls is None or not callable(cls):
            where = getattr(module, "__file__", None) or p.module
            raise ConfigError(f'{self.label}: module "{p.module}" ({where}) has no class '
                              f'"{p.layer}"')
        self.blobs = ParamBlobs(self)
        self.user = _instantiate(cls, param, self.label)
        self.user.param_str = p.param_str
        self.user.phase = self.phase.lower()
        self.user.blobs = self.blobs
        self._stand_in_tops: list[_StandInBlob] = []

    def _call_user(self, method: str, *args):
        """Call a user hook while the net is built; its failures are configuration errors
        (the original traceback stays chained, shown with --debug)."""
        try:
            getattr(self.user, method)(*args)
        except NetforgeError:
            raise
        except Exception as exc:
            raise ConfigError(f"{self.label}: {type(self.user).__name__}.{method}() raised "
                              f"{type(exc).__name__}: {exc}") from exc

    def _stand_ins(self, shapes) -> list[_StandInBlob]:
        return [_StandInBlob(shape, self.dtype, self.xp) for shape in shapes]

    def setup(self, bottom_shapes):
        # Caffe's fresh tops are empty; the user's setup or reshape must shape them.
        self._stand_in_tops = self._stand_ins([(0,)] * len(self.param.top))
        self._call_user("setup", self._stand_ins(bottom_shapes), self._stand_in_tops)

    def reshape(self, bottom_shapes):
        tops = self._stand_in_tops
        self._call_user("reshape", self._stand_ins(bottom_shapes), tops)
        for j, top in enumerate(tops):
            if not top.was_reshaped:
                raise ConfigError(f'{self.label}: reshape() left top "{self.param.top[j]}" '
                                  f"without a shape; call top[{j}].reshape(...) there")
        return [top.shape for top in tops]

    def forward(self, bottoms, tops):
        self._run("reshape", bottoms, tops)
        self._run("forward", bottoms, tops)

    def backward(self, tops, propagate_down, bottoms):
        self._run("backward", tops, list(propagate_down), bottoms)

    def _run(self, method: str, *args):
        try:
            getattr(self.user, method)(*args)
        except Exception as exc:  # keep the user's own exception and traceback
            exc.add_note(f"in {type(self.user).__name__}.{method}() of {self.label}")
            raise

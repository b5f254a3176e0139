"""netforge: Caffe's nets and solvers in modern Python (numpy on CPU, CuPy on GPU).

The pycaffe-shaped API: ``Net``, ``Classifier``, ``io`` (Transformer, load_image, ...),
``Layer`` (base for Python layers), ``get_solver``, ``set_mode_cpu/gpu``, ``set_device``;
and for deployment ``load_frozen`` (a model written by ``netforge freeze``).

The face is lazy (PEP 562): ``import netforge`` loads nothing but this file and the version,
and each name below imports its module on first use, so ``import netforge.ops`` costs numpy
alone and the command line starts fast.
"""

from __future__ import annotations

import importlib

from netforge.version import __version__

TRAIN, TEST = "train", "test"

# public name -> (module, attribute); attribute None means the module itself
_EXPORTS = {
    "Net": ("netforge.net", "Net"),
    "Solver": ("netforge.train.solver", "Solver"),
    "get_solver": ("netforge.train.solver", "get_solver"),
    "DataParallel": ("netforge.train.parallel.driver", "DataParallel"),
    "Classifier": ("netforge.deploy.classifier", "Classifier"),
    "load_frozen": ("netforge.deploy.frozen", "load_frozen"),
    "io": ("netforge.deploy.caffe_io", None),
    "Layer": ("netforge.layers.python_layer", "UserLayer"),
    "allow_python_layers": ("netforge.layers.python_layer", "allow_python_layers"),
    "set_mode_cpu": ("netforge.backend", "set_mode_cpu"),
    "set_mode_gpu": ("netforge.backend", "set_mode_gpu"),
    "set_device": ("netforge.backend", "set_device"),
    # pycaffe's net specification: `from netforge import layers as L, params as P`
    # (netforge.layers, the layer package, doubles as pycaffe's `layers` object).
    "NetSpec": ("netforge.layers.netspec", "NetSpec"),
    "params": ("netforge.layers.netspec", "params"),
    "to_proto": ("netforge.layers.netspec", "to_proto"),
    # pycaffe's `from caffe.proto import caffe_pb2` is `from netforge import caffe_pb2`:
    # the generated schema module itself (same messages and field numbers as Caffe's).
    "caffe_pb2": ("netforge.netforge_pb2", None),
    # pycaffe's solver classes: netforge.SGDSolver("solver.prototxt"), ...
    "SGDSolver": ("netforge.train.solver_classes", "SGDSolver"),
    "NesterovSolver": ("netforge.train.solver_classes", "NesterovSolver"),
    "AdaGradSolver": ("netforge.train.solver_classes", "AdaGradSolver"),
    "RMSPropSolver": ("netforge.train.solver_classes", "RMSPropSolver"),
    "AdaDeltaSolver": ("netforge.train.solver_classes", "AdaDeltaSolver"),
    "AdamSolver": ("netforge.train.solver_classes", "AdamSolver"),
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'netforge' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def layer_type_list() -> list[str]:
    """The registered layer type strings, sorted (pycaffe's ``caffe.layer_type_list``)."""
    from netforge.layers import layer_types

    return sorted(layer_types())


__all__ = ["Net", "Classifier", "Layer", "Solver", "get_solver", "load_frozen", "io",
           "NetSpec", "params", "to_proto", "caffe_pb2", "SGDSolver", "NesterovSolver",
           "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "allow_python_layers",
           "set_mode_cpu", "set_mode_gpu", "set_device", "layer_type_list", "TRAIN", "TEST",
           "__version__", "DataParallel"]

"""netforge: Caffe's nets and solvers in modern Python (numpy on CPU, CuPy on GPU).

The pycaffe-shaped API: ``Net``, ``Classifier``, ``io`` (Transformer, load_image, ...),
``Layer`` (base for Python layers), ``get_solver``, ``set_mode_cpu/gpu``, ``set_device``;
and for deployment ``load_frozen`` (a model written by ``netforge freeze``).
"""

__version__ = "0.1.0"

from netforge import io  # noqa: E402
from netforge.backend import set_device, set_mode_cpu, set_mode_gpu  # noqa: E402
from netforge.classifier import Classifier  # noqa: E402
from netforge.frozen import load_frozen  # noqa: E402
from netforge.layers import layer_types as _layer_types  # noqa: E402
from netforge.layers.python_layer import UserLayer as Layer  # noqa: E402
from netforge.net import Net  # noqa: E402
from netforge.solver import Solver, get_solver  # noqa: E402

TRAIN, TEST = "train", "test"


def layer_type_list() -> list[str]:
    """The registered layer type strings, sorted (pycaffe's ``caffe.layer_type_list``)."""
    return sorted(_layer_types())


__all__ = ["Net", "Classifier", "Layer", "Solver", "get_solver", "load_frozen", "io",
           "set_mode_cpu", "set_mode_gpu", "set_device", "layer_type_list", "TRAIN", "TEST",
           "__version__"]

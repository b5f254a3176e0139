"""netforge: Caffe's nets and solvers in modern Python (numpy on CPU, CuPy on GPU)."""

__version__ = "0.1.0"

from netforge.backend import set_device, set_mode_cpu, set_mode_gpu  # noqa: E402
from netforge.net import Net  # noqa: E402
from netforge.solver import Solver, get_solver  # noqa: E402

TRAIN, TEST = "train", "test"

__all__ = ["Net", "Solver", "get_solver", "set_mode_cpu", "set_mode_gpu", "set_device",
           "TRAIN", "TEST", "__version__"]

"""Device choice and the array module (numpy on CPU, CuPy on GPU).

The choice is made once per process (``set_mode_cpu``/``set_mode_gpu``) — the one piece of
global state netforge keeps, as pycaffe does. Everything else receives ``xp`` explicitly.
"""

from __future__ import annotations

import os

import numpy as np

from netforge.errors import DeviceError

_mode = "cpu"
_device_id = 0
_debug_checks: bool | None = None  # None: from NETFORGE_DEBUG, else host arrays only
_override = None  # an array module standing in for the device (use_array_module)


def set_mode_cpu() -> None:
    global _mode
    _mode = "cpu"


def set_mode_gpu() -> None:
    global _mode
    _require_gpu(_device_id)
    _mode = "gpu"


def set_device(device_id: int) -> None:
    global _device_id
    _device_id = int(device_id)
    if _mode == "gpu":
        _require_gpu(_device_id)


def mode() -> str:
    return _mode


def use_array_module(xp) -> None:
    """Make ``array_module()`` return ``xp`` (None: back to numpy/CuPy by mode): a CuPy-like
    module whose arrays name it in a ``netforge_array_module`` class attribute (see
    ``ops.xp.get_array_module``). The tests use one that counts device→host reads."""
    global _override
    _override = xp


def array_module():
    """numpy, or cupy when the GPU mode is on (or the module set by use_array_module)."""
    if _override is not None:
        return _override
    if _mode == "gpu":
        import cupy

        cupy.cuda.Device(_device_id).use()
        return cupy
    return np


def _require_gpu(device_id: int) -> None:
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError(
            "a GPU was requested but CuPy is not installed "
            "(install the GPU extra: pip install 'netforge[gpu]'), or use --gpu -1 for CPU"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise DeviceError(f"a GPU was requested but CUDA is not usable: {exc}") from exc
    if not 0 <= device_id < count:
        raise DeviceError(f"GPU {device_id} was requested but this machine has {count} GPU(s)")


def gpu_available() -> bool:
    try:
        _require_gpu(0)
    except DeviceError:
        return False
    return True


def to_host(array) -> np.ndarray:
    """A numpy array for either kind of input (copies from the device when needed)."""
    get = getattr(array, "get", None)  # a device array (CuPy's, or a stand-in's)
    if get is not None:
        return get()
    return array if isinstance(array, np.ndarray) else np.asarray(array)


def set_debug_checks(on: bool | None) -> None:
    """Force the data-dependent range checks (labels, indices) on or off; None restores the
    default: on for host (numpy) arrays, on device arrays only when NETFORGE_DEBUG=1."""
    global _debug_checks
    _debug_checks = on


def range_checks(xp) -> bool:
    """Whether kernels should check labels/indices against their range. The check reads the
    values back; on the host that is free, on a device it is a synchronisation (and breaks
    a CUDA-graph capture), so there it runs only in debug mode, as Caffe's CHECKs do."""
    if _debug_checks is not None:
        return _debug_checks
    return xp is np or os.environ.get("NETFORGE_DEBUG", "") not in ("", "0")

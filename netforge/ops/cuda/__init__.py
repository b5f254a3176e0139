"""CuPy kernels of netforge's own and the cuDNN adapter (the GPU compute core).

Nothing here is imported by ``import netforge`` or by a CPU run: the xp-generic ops in
``netforge.ops`` import a module of this package inside the ``xp is not numpy`` branch of the
function that needs it, so CuPy (and cuDNN) load only once a CuPy array reaches them.

    compile.py        the compile-once cache every kernel goes through
    pooling.py        MAX/AVE pooling forward and backward (one thread per output / input)
    normalization.py  LRN across channels, forward and backward
    loss.py           softmax + multinomial logistic loss into a 0-d device loss
    elementwise.py    dtype casts, bias+ReLU chains, ReLU backward, device-scalar fill
    optimizers.py     SGD / Nesterov / Adam updates reading the learning rate from the device
    amp.py            mixed precision: fused unscale + non-finite check, loss-scale update
    cudnn_adapter.py  the ONE module importing ``cudnn`` (nvidia-cudnn-frontend)
    conv.py           convolution: cuDNN when present, else im2col + GEMM with a warning

Status: written against CuPy 14 / CUDA 13 / cuDNN-frontend 1.32 documentation; none of it has
run on a GPU yet (see README, "GPU").
"""

from __future__ import annotations

import importlib.util


def cupy_installed() -> bool:
    """Whether CuPy can be imported (without importing it)."""
    return importlib.util.find_spec("cupy") is not None


def cudnn_frontend_installed() -> bool:
    """Whether nvidia-cudnn-frontend (``import cudnn``) is installed, without importing it."""
    return importlib.util.find_spec("cudnn") is not None

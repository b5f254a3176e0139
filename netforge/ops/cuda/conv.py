"""Convolution and InnerProduct on CuPy arrays: cuDNN when its frontend is installed, else
the xp-generic im2col + GEMM path with a warning.

``conv_forward``/``conv_backward``/``linear_*`` return True when they did the work and False
when the caller's xp-generic code should run instead (no cuDNN frontend). The fallback works
eagerly but cannot be captured in a CUDA graph (its GEMMs are ``cupy.matmul``, i.e. cuBLAS,
which CuPy refuses during capture), so the captured step is turned off with it.

Caffe's semantics kept: dw and db accumulate into the param diffs; dx is assigned. The
accumulation goes through a per-shape staging buffer allocated on the first (eager) call.
"""

from __future__ import annotations

import logging
import os

import cupy

from netforge.ops.cuda import cudnn_frontend_installed

log = logging.getLogger("netforge")

_warned = False
_stages: dict[tuple, cupy.ndarray] = {}


def use_cudnn() -> bool:
    """cuDNN unless missing or turned off with NETFORGE_CUDNN=0 (to time the fallback)."""
    global _warned
    if os.environ.get("NETFORGE_CUDNN", "1") == "0":
        return False
    if cudnn_frontend_installed():
        return True
    if not _warned:
        log.warning("nvidia-cudnn-frontend is not installed: convolution falls back to "
                    "im2col + GEMM (slower, and the training step cannot be captured as a "
                    "CUDA graph); install netforge[gpu]")
        _warned = True
    return False


def allow_tf32() -> bool:
    return os.environ.get("NETFORGE_TF32", "0") == "1"


def _stage(like) -> cupy.ndarray:
    key = (cupy.cuda.Device().id, like.shape, like.dtype.str)
    buf = _stages.get(key)
    if buf is None:
        buf = cupy.empty(like.shape, dtype=like.dtype)
        _stages[key] = buf
    return buf


def conv_forward(x, w, b, y, *, stride, pad, dilation, relu: bool = False) -> bool:
    if not use_cudnn():
        return False
    from netforge.ops.cuda import cudnn_adapter

    fused = cudnn_adapter.supports_fused_bias_relu()
    cudnn_adapter.conv_forward(x, w, y, pad=pad, stride=stride, dilation=dilation,
                               bias=b if fused else None, relu=relu and fused,
                               allow_tf32=allow_tf32())
    if not fused and (b is not None or relu):
        from netforge.ops.cuda.elementwise import bias_relu

        n, k = y.shape[:2]
        y3 = y.reshape(n, k, -1)
        bias = b if b is not None else _zeros(k, y.dtype)
        bias_relu(y3, bias, y3) if relu else cupy.add(y3, bias[:, None], out=y3)
    return True


def _zeros(k: int, dtype) -> cupy.ndarray:
    key = ("zeros", cupy.cuda.Device().id, k, cupy.dtype(dtype).str)
    if key not in _stages:
        _stages[key] = cupy.zeros(k, dtype=dtype)
    return _stages[key]


def conv_backward(dy, x, w, *, dx, dw, db, stride, pad, dilation) -> bool:
    if not use_cudnn():
        return False
    from netforge.ops.cuda import cudnn_adapter

    opts = {"pad": pad, "stride": stride, "dilation": dilation, "allow_tf32": allow_tf32()}
    if dw is not None:
        stage = _stage(dw)
        cudnn_adapter.conv_backward_filter(x, dy, stage, **opts)
        cupy.add(dw, stage, out=dw)
    if db is not None:
        stage = _stage(db)
        cupy.sum(dy, axis=(0, 2, 3), out=stage)
        cupy.add(db, stage, out=db)
    if dx is not None:
        cudnn_adapter.conv_backward_data(dy, w, dx, **opts)
    return True


def linear_forward(x, w, b, y, *, transpose: bool) -> bool:
    """y (M, N) = x (M, K) @ (w if transpose else w.T) [+ b] through cuDNN's matmul."""
    if not use_cudnn():
        return False
    from netforge.ops.cuda import cudnn_adapter

    cudnn_adapter.matmul(x, w if transpose else w.T, y, allow_tf32=allow_tf32())
    if b is not None:
        cupy.add(y, b, out=y)
    return True


def linear_backward(dy, x, w, *, dx, dw, db, transpose: bool) -> bool:
    if not use_cudnn():
        return False
    from netforge.ops.cuda import cudnn_adapter

    tf32 = allow_tf32()
    if dw is not None:
        stage = _stage(dw)
        if transpose:
            cudnn_adapter.matmul(x.T, dy, stage, allow_tf32=tf32)
        else:
            cudnn_adapter.matmul(dy.T, x, stage, allow_tf32=tf32)
        cupy.add(dw, stage, out=dw)
    if db is not None:
        stage = _stage(db)
        cupy.sum(dy, axis=0, out=stage)
        cupy.add(db, stage, out=db)
    if dx is not None:
        cudnn_adapter.matmul(dy, w.T if transpose else w, dx, allow_tf32=tf32)
    return True

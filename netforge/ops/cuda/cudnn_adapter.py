"""The one module that imports ``cudnn`` (nvidia-cudnn-frontend, pinned in pyproject's
``[gpu]`` extra): convolution fprop (+ bias, + ReLU), dgrad and wgrad, BatchNorm training and
inference, and matmul, on CuPy arrays.

Why cuDNN's frontend: CuPy 14 dropped its cuDNN wrappers, and the frontend is also the only
capturable GEMM we have (CuPy refuses cuBLAS during CUDA-graph capture), so InnerProduct's
matmul goes through it inside a captured step.

How: a ``cudnn.pygraph`` per operation and shape, built once (``validate →
build_operation_graph → create_execution_plans([A, FALLBACK]) → check_support →
build_plans``) on the first call — the eager warm-up iteration, before capture — and cached
by (op, shapes, strides, dtype, options). Execution passes raw device pointers
(``int(arr.data.ptr)``), never the CuPy arrays: ``ndarray.__dlpack__`` would make the legacy
stream wait on CuPy's stream, which is illegal during capture. One handle per device, bound
once to the stream current when it is created, and one workspace grown to the largest need.

Status: written against frontend 1.32 / cuDNN 9 documentation and tests; not yet run on a GPU.
"""

from __future__ import annotations

import cudnn
import cupy
import numpy

# cudnn.data_type for the storage dtypes netforge uses (bf16 through ml_dtypes' dtype name).
_DATA_TYPES = {
    "float32": cudnn.data_type.FLOAT,
    "float16": cudnn.data_type.HALF,
    "bfloat16": cudnn.data_type.BFLOAT16,
    "float64": cudnn.data_type.DOUBLE,
}


def data_type(dtype) -> object:
    name = cupy.dtype(dtype).name
    if name not in _DATA_TYPES:
        raise TypeError(f"cuDNN has no data type for {name}")
    return _DATA_TYPES[name]


def strides_in_elements(a) -> list[int]:
    return [s // a.itemsize for s in a.strides]


class _Handles:
    """One cuDNN handle per device, bound to CuPy's stream current at creation; one workspace."""

    def __init__(self):
        self.handles: dict[int, object] = {}
        self.streams: dict[int, int] = {}
        self.workspaces: dict[int, cupy.ndarray] = {}

    def handle(self) -> object:
        device = cupy.cuda.Device().id
        stream = cupy.cuda.get_current_stream().ptr
        if device not in self.handles:
            self.handles[device] = cudnn.create_handle()
        if self.streams.get(device) != stream:
            # cudnn.set_stream costs ~2.4 µs even when unchanged: only on a real change, and
            # never during capture (the capture stream is set during the warm-up already).
            cudnn.set_stream(handle=self.handles[device], stream=stream)
            self.streams[device] = stream
        return self.handles[device]

    def workspace(self, nbytes: int) -> int:
        device = cupy.cuda.Device().id
        ws = self.workspaces.get(device)
        if ws is None or ws.nbytes < nbytes:
            if cupy.cuda.get_current_stream().is_capturing():
                raise RuntimeError("cuDNN workspace must be sized during the warm-up, not in "
                                   "capture")
            ws = cupy.empty(max(int(nbytes), 1), dtype=cupy.uint8)
            self.workspaces[device] = ws
        return int(ws.data.ptr)


_handles = _Handles()


class BuiltGraph:
    """A built cuDNN graph, its tensors in call order, and its workspace size."""

    def __init__(self, graph, tensors: list, workspace_bytes: int):
        self.graph = graph
        self.tensors = tensors
        self.workspace_bytes = workspace_bytes

    def execute(self, *arrays) -> None:
        pack = {t: int(a.data.ptr) for t, a in zip(self.tensors, arrays, strict=True)}
        handle = _handles.handle()
        self.graph.execute(pack, _handles.workspace(self.workspace_bytes), handle=handle)


_graphs: dict[tuple, BuiltGraph] = {}


def _signature(op: str, arrays, options) -> tuple:
    return (op, cupy.cuda.Device().id, tuple(options),
            tuple((a.shape, a.strides, a.dtype.str) for a in arrays))


def _new_graph(io_dtype, allow_tf32: bool):
    graph = cudnn.pygraph(io_data_type=data_type(io_dtype),
                          intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=_handles.handle())
    return graph


def _finish(graph, tensors, allow_tf32: bool, io_dtype=None) -> BuiltGraph:
    graph.validate()
    graph.build_operation_graph()
    if not allow_tf32 and io_dtype is not None and cupy.dtype(io_dtype) == cupy.float32:
        # strict fp32 (Caffe's numbers): keep TF32 tensor-core engines out — fp32 graphs
        # only; half-precision graphs need the tensor cores
        graph.deselect_numeric_notes([cudnn.numerical_note.TENSOR_CORE])
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return BuiltGraph(graph, tensors, int(graph.get_workspace_size()))


def _tensor(graph, name: str, a):
    return graph.tensor(name=name, dim=list(a.shape), stride=strides_in_elements(a),
                        data_type=data_type(a.dtype))


def _cached(op: str, arrays, options, build) -> BuiltGraph:
    key = _signature(op, arrays, options)
    built = _graphs.get(key)
    if built is None:
        if cupy.cuda.get_current_stream().is_capturing():
            raise RuntimeError(f"cuDNN {op} graph for a new shape requested during capture: "
                               "run one eager warm-up iteration first")
        built = build()
        _graphs[key] = built
    return built


def conv_forward(x, w, y, *, pad, stride, dilation, bias=None, relu: bool = False,
                 allow_tf32: bool = False) -> None:
    """y (N, K, OH, OW) = conv(x (N, C, H, W), w (K, C/g, kh, kw)) [+ bias (K,)] [ReLU].

    Groups are inferred by cuDNN from w's channel count. bias is viewed as (1, K, 1, 1).
    """
    b4 = bias.reshape(1, -1, 1, 1) if bias is not None else None
    arrays = [x, w] + ([b4] if b4 is not None else []) + [y]
    options = ("fprop", tuple(pad), tuple(stride), tuple(dilation), relu, allow_tf32)

    def build():
        g = _new_graph(x.dtype, allow_tf32)
        tx, tw = _tensor(g, "x", x), _tensor(g, "w", w)
        out = g.conv_fprop(image=tx, weight=tw, padding=list(pad), stride=list(stride),
                           dilation=list(dilation))
        tensors = [tx, tw]
        if b4 is not None:
            tb = _tensor(g, "b", b4)
            out = g.bias(name="bias", input=out, bias=tb)
            tensors.append(tb)
        if relu:
            out = g.relu(name="relu", input=out)
        out.set_output(True).set_data_type(data_type(y.dtype))
        out.set_dim(list(y.shape)).set_stride(strides_in_elements(y))
        return _finish(g, tensors + [out], allow_tf32, x.dtype)

    _cached("conv_fprop", arrays, options, build).execute(*arrays)


def conv_backward_data(dy, w, dx, *, pad, stride, dilation, allow_tf32: bool = False) -> None:
    """dx (N, C, H, W), assigned = the adjoint of conv_forward applied to dy."""
    options = ("dgrad", tuple(pad), tuple(stride), tuple(dilation), allow_tf32)

    def build():
        g = _new_graph(dy.dtype, allow_tf32)
        tdy, tw = _tensor(g, "dy", dy), _tensor(g, "w", w)
        out = g.conv_dgrad(loss=tdy, filter=tw, padding=list(pad), stride=list(stride),
                           dilation=list(dilation))
        out.set_output(True).set_dim(list(dx.shape)).set_stride(strides_in_elements(dx))
        out.set_data_type(data_type(dx.dtype))
        return _finish(g, [tdy, tw, out], allow_tf32, dy.dtype)

    _cached("conv_dgrad", [dy, w, dx], options, build).execute(dy, w, dx)


def conv_backward_filter(x, dy, dw, *, pad, stride, dilation, allow_tf32: bool = False) -> None:
    """dw (K, C/g, kh, kw), assigned (callers accumulating into a param diff add it)."""
    options = ("wgrad", tuple(pad), tuple(stride), tuple(dilation), allow_tf32)

    def build():
        g = _new_graph(x.dtype, allow_tf32)
        tx, tdy = _tensor(g, "x", x), _tensor(g, "dy", dy)
        out = g.conv_wgrad(image=tx, loss=tdy, padding=list(pad), stride=list(stride),
                           dilation=list(dilation))
        out.set_output(True).set_dim(list(dw.shape)).set_stride(strides_in_elements(dw))
        out.set_data_type(data_type(dw.dtype))
        return _finish(g, [tx, tdy, out], allow_tf32, x.dtype)

    _cached("conv_wgrad", [x, dy, dw], options, build).execute(x, dy, dw)


def matmul(a, b, c, *, allow_tf32: bool = False) -> None:
    """c (B, M, N) = a (B, M, K) @ b (B, K, N); 2-D operands are viewed with B = 1.

    Transposed operands are passed as strided views (cuDNN reads the strides), so
    InnerProduct's x @ W.T needs no copy.
    """
    a3, b3, c3 = (m if m.ndim == 3 else m[None] for m in (a, b, c))

    def build():
        g = _new_graph(a3.dtype, allow_tf32)
        ta, tb = _tensor(g, "a", a3), _tensor(g, "b", b3)
        out = g.matmul(name="matmul", A=ta, B=tb)
        out.set_output(True).set_data_type(data_type(c3.dtype))
        out.set_dim(list(c3.shape)).set_stride(strides_in_elements(c3))
        return _finish(g, [ta, tb, out], allow_tf32, a3.dtype)

    _cached("matmul", [a3, b3, c3], (allow_tf32,), build).execute(a3, b3, c3)


def batch_norm_train(x, scale, bias, running_mean, running_var, y, saved_mean, saved_inv_var,
                     *, epsilon: float, momentum: float) -> None:
    """Training BatchNorm over (N, H, W) per channel with fp32 statistics. scale, bias and
    the running/saved statistics are (1, C, 1, 1) fp32; running stats are updated in place
    (cuDNN writes next_running_*: both are the same buffers here)."""
    arrays = [x, scale, bias, running_mean, running_var, y, saved_mean, saved_inv_var]
    options = ("bn_train", float(epsilon), float(momentum))

    def build():
        g = _new_graph(x.dtype, False)
        tx, ts, tb = _tensor(g, "x", x), _tensor(g, "scale", scale), _tensor(g, "bias", bias)
        trm, trv = _tensor(g, "rmean", running_mean), _tensor(g, "rvar", running_var)
        eps = g.tensor(name="eps", dim=[1, 1, 1, 1], stride=[1, 1, 1, 1],
                       data_type=cudnn.data_type.FLOAT, is_pass_by_value=True)
        mom = g.tensor(name="momentum", dim=[1, 1, 1, 1], stride=[1, 1, 1, 1],
                       data_type=cudnn.data_type.FLOAT, is_pass_by_value=True)
        ty, tmean, tinv, tnm, tnv = g.batchnorm(
            name="bn", input=tx, scale=ts, bias=tb, in_running_mean=trm, in_running_var=trv,
            epsilon=eps, momentum=mom)
        for t, a in ((ty, y), (tmean, saved_mean), (tinv, saved_inv_var),
                     (tnm, running_mean), (tnv, running_var)):
            t.set_output(True).set_data_type(data_type(a.dtype))
        built = _finish(g, [tx, ts, tb, trm, trv, ty, tmean, tinv], False)
        built.next_stats = (tnm, tnv)
        built.scalars = (eps, mom)
        return built

    built = _cached("bn_train", arrays, options, build)
    pack = {t: int(a.data.ptr) for t, a in zip(built.tensors, arrays, strict=True)}
    pack[built.next_stats[0]] = int(running_mean.data.ptr)
    pack[built.next_stats[1]] = int(running_var.data.ptr)
    # pass-by-value scalars come from host memory (the frontend's tests pass CPU tensors);
    # kept on the built graph so the buffers outlive any captured replay
    if not hasattr(built, "host_scalars"):
        built.host_scalars = (numpy.full((1, 1, 1, 1), epsilon, numpy.float32),
                              numpy.full((1, 1, 1, 1), momentum, numpy.float32))
    pack[built.scalars[0]] = built.host_scalars[0].ctypes.data
    pack[built.scalars[1]] = built.host_scalars[1].ctypes.data
    built.graph.execute(pack, _handles.workspace(built.workspace_bytes), handle=_handles.handle())


def supports_fused_bias_relu() -> bool:
    """conv + bias + ReLU in one graph needs cuDNN backend ≥ 9.5 (frontend tests' gate)."""
    version = tuple(int(p) for p in cudnn.backend_version_string().split(".")[:2])
    return version >= (9, 5)

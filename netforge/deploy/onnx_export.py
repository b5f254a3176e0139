"""``netforge export-onnx``: a deploy net with its weights as an ONNX model (opset 17).

The graph is built from the compiled net, layer by layer, with the batch dimension left
symbolic ("N"). Caffe's rules that ONNX spells differently are made explicit:
  * Pooling rounds its output size up (and drops a last window that starts in the
    padding): the end padding is chosen so that ONNX's floor rule gives Caffe's size;
    AVE divides by the window clipped to the padded image, which is a zero Pad of ``pad``
    followed by an AveragePool that does not count the extra end padding;
  * LRN WITHIN_CHANNEL becomes x / (1 + α·avg_{n×n}(x²))^β from elementary ops;
  * BatchNorm's accumulated statistics are divided by its scale factor.
Layers without an ONNX form raise ConfigError naming the layer. Needs the ``onnx`` package
(``pip install 'netforge[onnx]'``).
"""

from __future__ import annotations

import json

import numpy as np

from netforge import backend
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError
from netforge.files import atomic_write_bytes
from netforge.net import Net
from netforge.version import __version__

OPSET = 17
SUPPORTED = ("Input", "Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU",
             "Sigmoid", "TanH", "Softmax", "Concat", "Eltwise", "BatchNorm", "Scale", "Bias",
             "LRN", "Dropout", "Flatten", "Reshape", "Split", "AbsVal", "ELU", "BNLL", "PReLU",
             "Power", "Clip")


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError("exporting to ONNX needs the onnx package: pip install "
                          "'netforge[onnx]' (or pip install onnx)") from None
    return onnx


class _GraphBuilder:
    """Collects nodes and initializers; gives every in-place version of a blob its own
    tensor name (the last version keeps the blob's name, so outputs are named as in the
    net)."""

    def __init__(self, onnx, net: Net):
        self.onnx = onnx
        self.helper = onnx.helper
        self.net = net
        self.nodes: list = []
        self.initializers: list = []
        self.current: dict[str, str] = {}
        self._productions: dict[str, int] = {}
        self._remaining: dict[str, int] = {}
        for step in net.plan.steps:
            for name in step.top_names:
                self._remaining[name] = self._remaining.get(name, 0) + 1
        self._unique = 0

    def fresh(self, hint: str) -> str:
        self._unique += 1
        return f"{hint}__{self._unique}"

    def produce(self, name: str) -> str:
        """The tensor name for a new version of blob ``name``."""
        self._remaining[name] -= 1
        count = self._productions.get(name, 0)
        self._productions[name] = count + 1
        # A net input keeps its name on the version the caller feeds; other blobs on
        # their last version, which is the one a net output exposes.
        is_input = name in self.net.plan.inputs
        plain = count == 0 if is_input else self._remaining[name] == 0
        tensor = name if plain else f"{name}__v{count}"
        self.current[name] = tensor
        return tensor

    def constant(self, hint: str, array) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs, outputs, **attrs) -> None:
        self.nodes.append(self.helper.make_node(op, list(inputs), list(outputs),
                                                name=self.fresh(op), **attrs))


def _host(blob) -> np.ndarray:
    return np.ascontiguousarray(backend.to_host(blob.data), dtype=np.float32)


def _broadcast_shape(operand_shape, axis: int, ndim: int) -> tuple[int, ...]:
    """Shape that makes an operand covering axes axis.. broadcast like Caffe's Scale/Bias."""
    return tuple(operand_shape) + (1,) * (ndim - axis - len(operand_shape))


def _pool_pads(size: int, out: int, kernel: int, stride: int, pad: int) -> int:
    """End padding so that ONNX's floor((size + pad + end - k) / s) + 1 equals ``out``."""
    return max(pad, (out - 1) * stride + kernel - size - pad)


def _reshape_to(g: _GraphBuilder, x: str, y: str, bottom_shape, top_shape) -> None:
    """Reshape to ``top_shape``, keeping the batch dimension symbolic when it is kept."""
    target = list(top_shape)
    if top_shape and bottom_shape and top_shape[0] == bottom_shape[0]:
        target[0] = 0  # ONNX: copy this dimension from the input
    g.node("Reshape", [x, g.constant("shape", np.array(target, np.int64))], [y])


def _export_step(g: _GraphBuilder, step) -> None:
    layer = step.layer
    kind = layer.type
    bottoms = [g.current[name] for name in step.bottom_names]
    shapes_in = [b.shape for b in step.bottoms]
    if kind == "Split":  # tops alias the bottom
        for name in step.top_names:
            g._remaining[name] -= 1
            g.current[name] = bottoms[0]
        return
    if kind == "Convolution" or kind == "Deconvolution":
        w = g.constant(f"{layer.name}_w", _host(layer.blobs[0]))
        inputs = [w] + ([g.constant(f"{layer.name}_b", _host(layer.blobs[1]))]
                        if layer.bias_term else [])
        attrs = {"kernel_shape": list(layer.blobs[0].shape[2:]),
                 "pads": [*layer.pad, *layer.pad], "strides": list(layer.stride),
                 "dilations": list(layer.dilation), "group": layer.group}
        op = "Conv" if kind == "Convolution" else "ConvTranspose"
        for x, name in zip(bottoms, step.top_names, strict=True):
            g.node(op, [x, *inputs], [g.produce(name)], **attrs)
        return
    tops = [g.produce(name) for name in step.top_names]
    x = bottoms[0] if bottoms else None
    if kind == "Input":
        return
    if kind == "InnerProduct":
        w = g.constant(f"{layer.name}_w", _host(layer.blobs[0]))
        args = [w] + ([g.constant(f"{layer.name}_b", _host(layer.blobs[1]))]
                      if layer.bias_term else [])
        flat = g.fresh(f"{layer.name}_flat")
        g.node("Flatten", [x], [flat], axis=layer.axis)
        top_shape = step.tops[0].shape
        gemm = tops[0] if len(top_shape) == 2 else g.fresh(f"{layer.name}_gemm")
        g.node("Gemm", [flat, *args], [gemm], transB=0 if layer.transpose else 1)
        if gemm != tops[0]:
            _reshape_to(g, gemm, tops[0], shapes_in[0], top_shape)
    elif kind == "Pooling":
        _export_pooling(g, layer, x, tops[0], shapes_in[0], step.tops[0].shape)
    elif kind == "ReLU":
        if layer.slope:
            g.node("LeakyRelu", [x], tops, alpha=layer.slope)
        else:
            g.node("Relu", [x], tops)
    elif kind in ("Sigmoid", "TanH", "AbsVal"):
        g.node({"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs"}[kind], [x], tops)
    elif kind == "BNLL":
        g.node("Softplus", [x], tops)
    elif kind == "ELU":
        g.node("Elu", [x], tops, alpha=float(layer.param.elu_param.alpha))
    elif kind == "PReLU":
        slope = _host(layer.blobs[0])
        slope = slope.reshape(_broadcast_shape(slope.shape or (1,), 1, len(shapes_in[0])))
        g.node("PRelu", [x, g.constant(f"{layer.name}_slope", slope)], tops)
    elif kind == "Power":
        _export_power(g, layer, x, tops[0])
    elif kind == "Clip":
        p = layer.param.clip_param
        g.node("Clip", [x, g.constant("min", np.float32(p.min)),
                        g.constant("max", np.float32(p.max))], tops)
    elif kind == "Softmax":
        g.node("Softmax", [x], tops, axis=layer.axis)
    elif kind == "Concat":
        g.node("Concat", bottoms, tops, axis=layer.axis)
    elif kind == "Eltwise":
        _export_eltwise(g, layer, bottoms, tops[0])
    elif kind == "BatchNorm":
        _export_batch_norm(g, layer, x, tops[0])
    elif kind in ("Scale", "Bias"):
        _export_scale_bias(g, layer, x, tops[0], len(shapes_in[0]))
    elif kind == "LRN":
        _export_lrn(g, layer, x, tops[0])
    elif kind == "Dropout":
        g.node("Identity", [x], tops)  # TEST phase: the identity
    elif kind in ("Flatten", "Reshape"):
        _reshape_to(g, x, tops[0], shapes_in[0], step.tops[0].shape)
    else:
        raise ConfigError(f'{layer.label}: layer type "{kind}" cannot be exported to ONNX '
                          f"(supported: {', '.join(SUPPORTED)})")


def _export_pooling(g, layer, x, y, in_shape, out_shape) -> None:
    if layer.stochastic:
        raise ConfigError(f"{layer.label}: STOCHASTIC pooling has no ONNX form")
    is_max = layer.method == pb.PoolingParameter.MAX
    if layer.global_pooling:
        g.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], [y])
        return
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
    eh = _pool_pads(in_shape[2], out_shape[2], kh, sh, ph)
    ew = _pool_pads(in_shape[3], out_shape[3], kw, sw, pw)
    window = {"kernel_shape": [kh, kw], "strides": [sh, sw]}
    if is_max:
        g.node("MaxPool", [x], [y], pads=[ph, pw, eh, ew], **window)
        return
    if ph or pw:  # Caffe counts the real padding in the divisor, not the extra end padding
        padded = g.fresh(f"{layer.name}_padded")
        pads = np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64)
        g.node("Pad", [x, g.constant("pads", pads)], [padded], mode="constant")
        x = padded
    g.node("AveragePool", [x], [y], pads=[0, 0, eh - ph, ew - pw], count_include_pad=0,
           **window)


def _export_eltwise(g, layer, bottoms, y) -> None:
    op = layer.operation
    if op == pb.EltwiseParameter.SUM:
        terms = []
        for x, c in zip(bottoms, layer.coeffs, strict=True):
            if c == 1.0:
                terms.append(x)
            else:
                scaled = g.fresh(f"{layer.name}_scaled")
                g.node("Mul", [x, g.constant("coeff", np.float32(c))], [scaled])
                terms.append(scaled)
        g.node("Sum", terms, [y])
    elif op == pb.EltwiseParameter.PROD:
        acc = bottoms[0]
        for i, x in enumerate(bottoms[1:], start=1):
            out = y if i == len(bottoms) - 1 else g.fresh(f"{layer.name}_prod")
            g.node("Mul", [acc, x], [out])
            acc = out
    else:
        g.node("Max", bottoms, [y])


def _export_batch_norm(g, layer, x, y) -> None:
    if not layer.use_global_stats:
        raise ConfigError(f"{layer.label}: BatchNorm with batch statistics "
                          "(use_global_stats: false) has no inference form to export")
    mean_sum, var_sum, factor = (_host(b).astype(np.float64) for b in layer.blobs)
    norm = 0.0 if factor.ravel()[0] == 0 else 1.0 / factor.ravel()[0]
    channels = mean_sum.size
    args = [g.constant(f"{layer.name}_scale", np.ones(channels, np.float32)),
            g.constant(f"{layer.name}_bias", np.zeros(channels, np.float32)),
            g.constant(f"{layer.name}_mean", (mean_sum * norm).astype(np.float32)),
            g.constant(f"{layer.name}_var", (var_sum * norm).astype(np.float32))]
    g.node("BatchNormalization", [x, *args], [y], epsilon=layer.eps)


def _export_scale_bias(g, layer, x, y, ndim: int) -> None:
    if layer.two_bottoms:
        raise ConfigError(f"{layer.label}: a {layer.type} with a second bottom cannot be "
                          "exported to ONNX (only learned factors)")
    p = layer.param.scale_param if layer.type == "Scale" else layer.param.bias_param
    axis = p.axis % ndim if layer.blobs[0].shape else 0
    shape = _broadcast_shape(layer.blobs[0].shape, axis, ndim)
    first = _host(layer.blobs[0]).reshape(shape)
    if layer.type == "Bias":
        g.node("Add", [x, g.constant(f"{layer.name}_bias", first)], [y])
        return
    if layer.bias_index is None:
        g.node("Mul", [x, g.constant(f"{layer.name}_scale", first)], [y])
        return
    scaled = g.fresh(f"{layer.name}_scaled")
    g.node("Mul", [x, g.constant(f"{layer.name}_scale", first)], [scaled])
    bias = _host(layer.blobs[layer.bias_index]).reshape(shape)
    g.node("Add", [scaled, g.constant(f"{layer.name}_bias", bias)], [y])


def _export_lrn(g, layer, x, y) -> None:
    if layer.param.lrn_param.norm_region == pb.LRNParameter.ACROSS_CHANNELS:
        g.node("LRN", [x], [y], size=layer.size, alpha=layer.alpha, beta=layer.beta,
               bias=layer.k)
        return
    # WITHIN_CHANNEL: y = x / (1 + α·mean_{n×n}(x²))^β, zero padding counted (Caffe's form).
    pad = (layer.size - 1) // 2
    square, mean, base, denom = (g.fresh(f"{layer.name}_{s}") for s in
                                 ("sq", "mean", "base", "denom"))
    g.node("Mul", [x, x], [square])
    g.node("AveragePool", [square], [mean], kernel_shape=[layer.size, layer.size],
           pads=[pad] * 4, count_include_pad=1)
    scaled = g.fresh(f"{layer.name}_scaled")
    g.node("Mul", [mean, g.constant("alpha", np.float32(layer.alpha))], [scaled])
    g.node("Add", [scaled, g.constant("one", np.float32(1.0))], [base])
    g.node("Pow", [base, g.constant("beta", np.float32(layer.beta))], [denom])
    g.node("Div", [x, denom], [y])


def _export_power(g, layer, x, y) -> None:
    p = layer.param.power_param
    current = x
    if p.scale != 1.0:
        current_next = g.fresh(f"{layer.name}_scaled")
        g.node("Mul", [current, g.constant("scale", np.float32(p.scale))], [current_next])
        current = current_next
    if p.shift != 0.0:
        current_next = g.fresh(f"{layer.name}_shifted")
        g.node("Add", [current, g.constant("shift", np.float32(p.shift))], [current_next])
        current = current_next
    if p.power != 1.0:
        g.node("Pow", [current, g.constant("power", np.float32(p.power))], [y])
    else:
        g.node("Identity", [current], [y])


def net_to_onnx(net: Net, metadata: dict | None = None):
    """An ``onnx.ModelProto`` computing ``net``'s outputs from its inputs."""
    onnx = _onnx()
    helper = onnx.helper
    g = _GraphBuilder(onnx, net)
    if not net.inputs:
        raise ConfigError(f'net "{net.name}" has no Input layer; export a deploy net')
    inputs = []
    for name in net.inputs:
        shape = net.blobs[name].shape
        inputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                    ["N", *shape[1:]]))
    batch = net.blobs[net.inputs[0]].shape[0]
    for step in net.plan.steps:
        _export_step(g, step)
    outputs = []
    for name in net.outputs:
        shape = net.blobs[name].shape
        dims = ["N", *shape[1:]] if shape and shape[0] == batch else list(shape)
        outputs.append(helper.make_tensor_value_info(g.current[name], onnx.TensorProto.FLOAT,
                                                     dims))
    graph = helper.make_graph(g.nodes, net.name or "net", inputs, outputs, g.initializers)
    model = helper.make_model(graph, producer_name="netforge", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def export_onnx(net: Net, output, metadata: dict | None = None) -> int:
    """Write ``net`` as an ONNX file (atomically); returns the number of nodes."""
    model = net_to_onnx(net, metadata)
    atomic_write_bytes(output, model.SerializeToString())
    return len(model.graph.node)


def frozen_metadata(frozen) -> dict:
    """ONNX metadata for a frozen model: its labels and preprocessing, as JSON."""
    p = frozen.preprocess
    return {"netforge.labels": json.dumps(frozen.labels),
            "netforge.preprocessing": json.dumps({
                "input": p.input, "channel_order": p.channel_order, "raw_scale": p.raw_scale,
                "mean_values": list(p.mean_values), "scale": p.scale,
                "image_dims": list(p.image_dims or ()),
                "has_mean_image": p.mean_image is not None})}

"""Post-training int8: the QDQ ONNX graph onnxruntime runs, against a numpy forward of the same
graph written from the ONNX operator definitions (quantize = saturate(round(x / s) + z),
dequantize = (q − z)·s, per-axis for weights)."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.deploy.compress import int8
from netforge.deploy.onnx_export import export_onnx
from netforge.net import Net

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

DEPLOY = """
name: "mlp"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 16 dim: 12 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 20 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def _numpy_forward(model, x):
    """Run a QDQ ONNX graph with numpy, one operator definition per branch."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values[model.graph.input[0].name] = x

    def attr(node, name, default):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def per_axis(param, rank, axis):
        if np.ndim(param) == 0:
            return param
        shape = [1] * rank
        shape[axis] = -1
        return np.reshape(param, shape)

    for node in model.graph.node:
        ins = [values[n] if n else None for n in node.input]
        op = node.op_type
        if op == "QuantizeLinear":
            axis = attr(node, "axis", 1)
            s = per_axis(ins[1], ins[0].ndim, axis)
            z = per_axis(ins[2], ins[0].ndim, axis)
            info = np.iinfo(z.dtype)
            q = np.clip(np.rint(ins[0] / s) + z.astype(np.int64), info.min, info.max)
            out = q.astype(z.dtype)
        elif op == "DequantizeLinear":
            axis = attr(node, "axis", 1)
            s = per_axis(ins[1], ins[0].ndim, axis)
            z = per_axis(ins[2], ins[0].ndim, axis)
            out = ((ins[0].astype(np.int64) - z.astype(np.int64)) * s).astype(np.float32)
        elif op == "Flatten":
            axis = attr(node, "axis", 1)
            out = ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)
        elif op == "Gemm":
            b = ins[1].T if attr(node, "transB", 0) else ins[1]
            out = ins[0] @ b + (ins[2] if len(ins) > 2 else 0)
        elif op == "Relu":
            out = np.maximum(ins[0], 0)
        else:
            pytest.fail(f"no numpy reference for {op}")
        values[node.output[0]] = out
    return values[model.graph.output[0].name]


def test_qdq_onnx_runs_in_onnxruntime_as_its_numpy_dequantised_forward(tmp_path):
    param = config.parse_text(DEPLOY, pb.NetParameter())
    net = Net(param, "test", seed=3)
    float_path, int8_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    export_onnx(net, float_path)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((16, 12)).astype(np.float32) for _ in range(4)]
    int8.quantize_qdq(str(float_path), int8_path, calibration)

    model = onnx.load(str(int8_path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Gemm"} <= ops
    # weights are int8 with one scale per output channel
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dequant_w = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                 and weights.get(n.input[0]) is not None and weights[n.input[0]].ndim == 2]
    assert [weights[n.input[0]].dtype for n in dequant_w] == [np.int8, np.int8]
    assert sorted(weights[n.input[1]].size for n in dequant_w) == [5, 20]

    x = rng.standard_normal((16, 12)).astype(np.float32)
    ort_out = int8.session(int8_path).run(None, {"data": x})[0]
    want = _numpy_forward(model, x)
    # onnxruntime fuses the QDQ pairs into integer kernels: its requantisation may round a
    # value to the neighbouring int8 step, so allow one output quantisation step
    out_scale = float(weights[model.graph.node[-1].input[1]]) if \
        model.graph.node[-1].op_type == "DequantizeLinear" else 1e-3
    np.testing.assert_allclose(ort_out, want, atol=1.01 * out_scale, rtol=0)
    # and the int8 model is close to the float net
    float_out = net.forward(data=x)["ip2"]
    assert np.abs(ort_out - float_out).max() < 0.1 * np.abs(float_out).max()


def test_accuracy_compares_the_two_models(tmp_path):
    param = config.parse_text(DEPLOY, pb.NetParameter())
    net = Net(param, "test", seed=4)
    float_path, int8_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    export_onnx(net, float_path)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((16, 12)).astype(np.float32) for _ in range(3)]
    int8.quantize_qdq(str(float_path), int8_path, inputs)
    labels = [net.forward(data=x)["ip2"].argmax(axis=1) for x in inputs]  # the float net's
    result = int8.evaluate(str(float_path), str(int8_path), inputs, labels, repeats=2)
    assert result.float_accuracy == 1.0  # ORT's float model agrees with netforge's net
    want = np.mean([(int8.session(int8_path).run(None, {"data": x})[0].argmax(axis=1) == y).mean()
                    for x, y in zip(inputs, labels, strict=True)])
    assert result.int8_accuracy == pytest.approx(want)


FIRE = """
name: "fire"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 15 dim: 15 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "squeeze" type: "Convolution" bottom: "pool1" top: "squeeze"
        convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "squeeze" top: "squeeze" }
layer { name: "e1" type: "Convolution" bottom: "squeeze" top: "e1"
        convolution_param { num_output: 6 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "e3" type: "Convolution" bottom: "squeeze" top: "e3"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "cat" type: "Concat" bottom: "e1" bottom: "e3" top: "cat" }
layer { name: "head" type: "Convolution" bottom: "cat" top: "head"
        convolution_param { num_output: 5 kernel_size: 1 weight_filler { type: "xavier" } } }
"""


def test_every_convolution_of_a_fire_module_runs_as_an_integer_kernel(tmp_path):
    """U8S8 activations: onnxruntime's optimiser turns each DQ → Conv → Q of a SqueezeNet-like
    block (after a max pool, feeding a concat) into a QLinearConv. (With S8S8, 24 of
    SqueezeNet 1.1's 26 convolutions stayed float between Q/DQ pairs: slower than float.)"""
    ort = pytest.importorskip("onnxruntime")
    net = Net(config.parse_text(FIRE, pb.NetParameter()), "test", seed=2)
    float_path, int8_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    export_onnx(net, float_path)
    rng = np.random.default_rng(1)
    int8.quantize_qdq(str(float_path), int8_path,
                      [rng.standard_normal((2, 3, 15, 15)).astype(np.float32) for _ in range(3)])
    model = onnx.load(str(int8_path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    activation_zero_points = {weights[n.input[2]].dtype for n in model.graph.node
                              if n.op_type == "QuantizeLinear"}
    assert activation_zero_points == {np.dtype(np.uint8)}
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") == 5

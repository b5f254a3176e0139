"""Post-training int8 quantization: the deploy net exported to ONNX (deploy/onnx_export.py),
then quantized by onnxruntime's own static quantizer as a QDQ graph (QuantizeLinear /
DequantizeLinear pairs around each op, the form every ONNX runtime reads): int8 weights with
one scale per output channel, 8-bit activations whose ranges are calibrated (min/max) on
batches of a dataset. The quantizer is onnxruntime's (a well-kept library) rather than ours:
its QDQ placement is what its kernels fuse into integer ops.

``evaluate`` scores float and int8 models on the same batches with onnxruntime, and times both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from netforge import backend
from netforge.errors import ConfigError
from netforge.files import atomic_path

log = logging.getLogger("netforge")


def _ort():
    try:
        import onnxruntime
        import onnxruntime.quantization as quantization
    except ImportError:
        raise ConfigError("int8 quantization needs onnxruntime: pip install "
                          "'netforge[onnx]'") from None
    return onnxruntime, quantization


def dataset_batches(net, iterations: int, input_blob: str = "data", label_blob: str = "label"):
    """(inputs, labels) of ``iterations`` forward passes of a TEST net with a data layer (the
    data after its transform: exactly what the deploy net's input receives)."""
    if input_blob not in net.blobs:
        raise ConfigError(f'the test net has no "{input_blob}" blob to calibrate with')
    inputs, labels = [], []
    for _ in range(iterations):
        net.forward()
        inputs.append(backend.to_host(net.blobs[input_blob].data).copy())
        if label_blob in net.blobs:
            labels.append(backend.to_host(net.blobs[label_blob].data).copy())
    return inputs, labels


def quantize_qdq(float_model: str, output, calibration: list[np.ndarray],
                 per_channel: bool = True, signed_activations: bool = False) -> None:
    """Write the QDQ int8 form of ONNX file ``float_model`` to ``output`` (atomically).

    Weights are int8 (symmetric); activations uint8 with a zero point (onnxruntime's "U8S8")
    unless ``signed_activations``. Why U8S8: onnxruntime's CPU kernels are built for it on
    x86-64 (VPMADDUBSW / VNNI multiply unsigned by signed bytes), and its graph optimiser
    fuses DequantizeLinear → Conv → QuantizeLinear into an integer QLinearConv for U8S8
    everywhere, but for S8S8 only in a few places: measured on SqueezeNet 1.1
    (tools/bench/int8.py), S8S8 left 24 of 26 convolutions in float between Q/DQ pairs and ran
    slower than the float model, U8S8 fused all 26."""
    onnxruntime, quantization = _ort()
    session = onnxruntime.InferenceSession(float_model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {name: batch.astype(np.float32)}

    with atomic_path(output) as tmp:
        # onnxruntime's recommended pre-pass (shape inference, graph clean-up) first
        quantization.quant_pre_process(float_model, str(tmp), skip_symbolic_shape=True)
        quantization.quantize_static(
            str(tmp), str(tmp), Reader(), quant_format=quantization.QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=quantization.QuantType.QInt8 if signed_activations
            else quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax)


@dataclass
class Int8Result:
    float_accuracy: float
    int8_accuracy: float
    float_ms: float  # per batch
    int8_ms: float

    def format(self) -> str:
        points = 100 * (self.int8_accuracy - self.float_accuracy)
        return (f"int8 (QDQ, onnxruntime): accuracy {self.int8_accuracy:.4f} vs float "
                f"{self.float_accuracy:.4f} ({points:+.2f} points); "
                f"{self.int8_ms:.3f} ms vs {self.float_ms:.3f} ms per batch "
                f"({self.float_ms / max(self.int8_ms, 1e-9):.2f}x)")


def session(path, threads: int = 1):
    onnxruntime, _ = _ort()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def accuracy(sess, inputs, labels) -> float:
    name = sess.get_inputs()[0].name
    right = total = 0
    for x, y in zip(inputs, labels, strict=True):
        scores = sess.run(None, {name: x.astype(np.float32)})[0]
        right += int((scores.reshape(len(x), -1).argmax(axis=1) == y.astype(int)).sum())
        total += len(x)
    return right / max(total, 1)


def ms_per_batch(sess, batch: np.ndarray, repeats: int = 20) -> float:
    """Best of ``repeats`` runs (the least disturbed by other work on the machine)."""
    name = sess.get_inputs()[0].name
    feed = {name: batch.astype(np.float32)}
    sess.run(None, feed)  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def evaluate(float_model, int8_model, inputs, labels, repeats: int = 20) -> Int8Result:
    f, q = session(float_model), session(int8_model)
    return Int8Result(accuracy(f, inputs, labels), accuracy(q, inputs, labels),
                      ms_per_batch(f, inputs[0], repeats), ms_per_batch(q, inputs[0], repeats))

"""ONNX export: onnxruntime must compute what netforge computes, for a small net holding
Caffe's tricky rules (ceil pooling with and without padding, LRN across and within channels,
BatchNorm statistics with a scale factor, Scale, grouped convolution, Concat, Eltwise,
Softmax), with the batch dimension left free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from netforge import netforge_pb2 as pb  # noqa: E402
from netforge.deploy.frozen import freeze  # noqa: E402
from netforge.deploy.onnx_export import export_onnx  # noqa: E402
from netforge.deploy.preprocess import Preprocess  # noqa: E402
from netforge.errors import ConfigError  # noqa: E402
from netforge.net import Net  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# Spatial sizes: 23 -conv s2-> 12 -max 3/2 (ceil: 6, floor would give 5)-> 6;
# AVE 3/2 pad 1 -> 4 (ceil, with a window reaching past the padding); AVE 2/2 pad 1 -> 4.
NET = """
name: "onnx_check"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 23 dim: 23 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "pool1" bottom: "conv2" top: "sum"
  eltwise_param { coeff: 1 coeff: -0.5 } }
layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "pool1" top: "prod"
  eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "sum" top: "max"
  eltwise_param { operation: MAX } }
layer { name: "norm" type: "LRN" bottom: "max" top: "norm"
  lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: 2 } }
layer { name: "normw" type: "LRN" bottom: "max" top: "normw"
  lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "apool" type: "Pooling" bottom: "norm" top: "apool"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "apool2" type: "Pooling" bottom: "normw" top: "apool2"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "apool" bottom: "apool2" top: "cat" }
layer { name: "drop" type: "Dropout" bottom: "cat" top: "cat" }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc"
  inner_product_param { num_output: 10 } }
layer { name: "sig" type: "Sigmoid" bottom: "fc" top: "sig" }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    (root / "net.prototxt").write_text(NET)
    net = Net(root / "net.prototxt", "test")
    rng = np.random.default_rng(0)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type == "BatchNorm":
            blobs[0].data[...] = rng.normal(0, 1, blobs[0].shape) * 4
            blobs[1].data[...] = rng.uniform(0.5, 2, blobs[1].shape) * 4
            blobs[2].data[...] = 4
        else:
            for blob in blobs:
                blob.data[...] = rng.normal(0, 0.5, blob.shape)
    net.save(root / "net.caffemodel")
    return root


def _run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"data": x}), strict=True))


@pytest.mark.parametrize("batch", [2, 3])
def test_onnxruntime_matches_netforge(files, batch):
    net = Net(files / "net.prototxt", "test", weights=files / "net.caffemodel")
    path = files / "net.onnx"
    export_onnx(net, path)
    x = np.random.default_rng(batch).normal(size=(batch, 3, 23, 23)).astype(np.float32)
    expected = net.forward_all(data=x)
    got = _run_onnx(path, x)
    assert set(got) == {"flat", "prob", "sig"} == set(expected)
    for name in got:
        assert got[name].shape == expected[name].shape
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_unsupported_layers_are_named(files, tmp_path):
    param = pb.NetParameter(name="odd")
    data = param.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add().dim.extend([1, 4])
    param.layer.add(name="pick", type="ArgMax", bottom=["data"], top=["best"])
    with pytest.raises(ConfigError, match='ArgMax "pick".*cannot be exported'):
        export_onnx(Net(param, "test"), tmp_path / "odd.onnx")
    assert not (tmp_path / "odd.onnx").exists()


def test_cli_exports_a_frozen_model_with_its_labels(files, tmp_path):
    frozen = tmp_path / "net.nf"
    freeze(files / "net.prototxt", files / "net.caffemodel", frozen, Preprocess(),
           labels=[str(i) for i in range(10)], fold_bn=True, drop_dropout=True)
    out = tmp_path / "frozen.onnx"
    env = dict(os.environ, NETFORGE_DEBUG="0")
    result = subprocess.run([sys.executable, "-m", "netforge", "-q", "export-onnx", "--model",
                             str(frozen), "--output", str(out)], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["netforge.labels"]) == [str(i) for i in range(10)]
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # folded
    net = Net(files / "net.prototxt", "test", weights=files / "net.caffemodel")
    x = np.random.default_rng(9).normal(size=(2, 3, 23, 23)).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(out, x)["prob"], net.forward(data=x)["prob"],
                               rtol=1e-4, atol=1e-6)

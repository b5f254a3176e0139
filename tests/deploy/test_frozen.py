"""Frozen models: the round trip keeps outputs bit for bit; BatchNorm folding and Dropout
removal keep them within float32 tolerance (and the top-5); loading never runs code."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from netforge import __version__
from netforge import netforge_pb2 as pb
from netforge.deploy.frozen import (
    fold_batch_norm,
    freeze,
    is_frozen_file,
    load_frozen,
    remove_dropout,
)
from netforge.deploy.preprocess import Preprocess
from netforge.errors import ConfigError, DataError
from netforge.net import Net

# Conv→BN→Scale→ReLU blocks with a residual Eltwise, as ResNet writes them: BatchNorm and
# Scale in place, plus one BatchNorm with its own top and a conv whose output is also read
# by a second layer (which must not be folded).
RESNET_STYLE = """
name: "mini_resnet"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2a" type: "Convolution" bottom: "conv1" top: "conv2a"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "bn2a" type: "BatchNorm" bottom: "conv2a" top: "bn2a" }
layer { name: "scale2a" type: "Scale" bottom: "bn2a" top: "bn2a" scale_param { bias_term: true } }
layer { name: "relu2a" type: "ReLU" bottom: "bn2a" top: "bn2a" }
layer { name: "conv2b" type: "Convolution" bottom: "bn2a" top: "conv2b"
  convolution_param { num_output: 8 kernel_size: 1 bias_term: false } }
layer { name: "peek" type: "ReLU" bottom: "conv2b" top: "peek" }
layer { name: "bn2b" type: "BatchNorm" bottom: "conv2b" top: "bn2b" }
layer { name: "scale2b" type: "Scale" bottom: "bn2b" top: "bn2b" scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "bn2b" bottom: "peek" top: "sum" }
layer { name: "relu" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def randomize(net: Net, seed: int = 0) -> None:
    """Random weights, and BatchNorm statistics with a scale factor other than one."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type == "BatchNorm":
            factor = 2.5
            blobs[0].data[...] = rng.normal(0, 0.5, blobs[0].shape) * factor
            blobs[1].data[...] = rng.uniform(0.2, 2.0, blobs[1].shape) * factor
            blobs[2].data[...] = factor
        elif layer.type == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].shape)
            blobs[1].data[...] = rng.normal(0, 0.3, blobs[1].shape)
        else:
            for blob in blobs:
                blob.data[...] = rng.normal(0, 0.4, blob.shape)


@pytest.fixture()
def resnet_files(tmp_path):
    model = tmp_path / "mini.prototxt"
    model.write_text(RESNET_STYLE)
    net = Net(model, "test")
    randomize(net)
    weights = tmp_path / "mini.caffemodel"
    net.save(weights)
    return model, weights


def _inputs(seed=1, n=2):
    return np.random.default_rng(seed).normal(size=(n, 3, 12, 12)).astype(np.float32)


def test_round_trip_outputs_identical_and_metadata_kept(resnet_files, tmp_path):
    model, weights = resnet_files
    out = tmp_path / "mini.nf"
    labels = [f"class {i}" for i in range(10)]
    settings = Preprocess(mean_values=(1.0, 2.0, 3.0), scale=0.5, channel_order="rgb",
                          image_dims=(14, 14))
    freeze(model, weights, out, settings, labels=labels)
    assert is_frozen_file(out) and not is_frozen_file(model) and not is_frozen_file(weights)
    frozen = load_frozen(out)
    reference = Net(model, "test", weights=weights)
    x = _inputs()
    expected = reference.forward(data=x)["prob"].copy()
    np.testing.assert_array_equal(frozen.net.forward(data=x)["prob"], expected)
    assert frozen.labels == labels
    assert frozen.info.netforge_version == __version__
    p = frozen.preprocess
    assert (p.input, p.mean_values, p.scale, p.channel_order, p.image_dims) == (
        "data", (1.0, 2.0, 3.0), 0.5, "rgb", (14, 14))
    # The file is also a caffemodel: usable as weights for the prototxt.
    again = Net(model, "test", weights=out)
    np.testing.assert_array_equal(again.forward(data=x)["prob"], expected)


def test_folded_net_matches_unfolded_and_keeps_the_top5(resnet_files, tmp_path):
    model, weights = resnet_files
    out = tmp_path / "folded.nf"
    freeze(model, weights, out, Preprocess(), fold_bn=True, drop_dropout=True)
    folded = load_frozen(out)
    types = [layer.type for layer in folded.net.layers]
    assert "Dropout" not in types
    # bn1/scale1 and bn2a/scale2a fold; bn2b does not (conv2b is also read by "peek").
    assert [layer.name for layer in folded.net.layers if layer.type == "BatchNorm"] == ["bn2b"]
    assert folded.info.batch_norm_folded and folded.info.dropout_removed
    reference = Net(model, "test", weights=weights)
    x = _inputs(n=5)  # forward_all: batches of 2, the last one padded
    expected = reference.forward_all(data=x)["prob"]
    got = folded.net.forward_all(data=x)["prob"]
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    top5 = np.argsort(-expected, axis=1)[:, :5]
    np.testing.assert_array_equal(np.argsort(-got, axis=1)[:, :5], top5)


def test_fold_batch_norm_arithmetic_by_hand():
    """One conv channel: w' = w·γ/σ, b' = (b − μ)·γ/σ + β with μ, var the stored sums / s."""
    net = pb.NetParameter()
    conv = net.layer.add(name="c", type="Convolution", bottom=["x"], top=["c"])
    conv.convolution_param.num_output = 1
    conv.blobs.add().CopyFrom(_blob(np.full((1, 1, 1, 1), 2.0)))
    conv.blobs.add().CopyFrom(_blob(np.array([0.5])))
    bn = net.layer.add(name="bn", type="BatchNorm", bottom=["c"], top=["c"])
    bn.batch_norm_param.eps = 0.0
    for values in ([6.0], [8.0], [2.0]):  # mean 3, var 4 (sigma 2) after dividing by 2
        bn.blobs.add().CopyFrom(_blob(np.array(values)))
    sc = net.layer.add(name="sc", type="Scale", bottom=["c"], top=["c"])
    sc.scale_param.bias_term = True
    sc.blobs.add().CopyFrom(_blob(np.array([3.0])))
    sc.blobs.add().CopyFrom(_blob(np.array([1.0])))
    folded, names = fold_batch_norm(net)
    assert names == ["bn"] and [layer.name for layer in folded.layer] == ["c"]
    w, b = (np.array(blob.data) for blob in folded.layer[0].blobs)
    np.testing.assert_allclose(w, [2.0 * 3 / 2])
    np.testing.assert_allclose(b, [(0.5 - 3.0) * 3 / 2 + 1.0])
    assert len(net.layer) == 3  # the input is left as it was


def _blob(array):
    blob = pb.BlobProto()
    blob.shape.dim.extend(array.shape)
    blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
    return blob


def test_remove_dropout_with_its_own_top_rewires_its_readers():
    net = pb.NetParameter()
    net.layer.add(name="in", type="Input", top=["x"])
    net.layer.add(name="d", type="Dropout", bottom=["x"], top=["xd"])
    net.layer.add(name="r", type="ReLU", bottom=["xd"], top=["y"])
    net.layer.add(name="d2", type="Dropout", bottom=["y"], top=["out"])  # a net output: kept
    out, removed = remove_dropout(net)
    assert removed == ["d"]
    assert [layer.name for layer in out.layer] == ["in", "r", "d2"]
    assert list(out.layer[1].bottom) == ["x"]


def test_python_layer_in_a_frozen_file_is_refused_without_importing_it(tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_layer.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "class Evil:\n    def setup(self, b, t): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    param = pb.NetParameter(name="evil")
    data = param.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add().dim.extend([1, 1, 2, 2])
    py = param.layer.add(name="boom", type="Python", bottom=["data"], top=["out"])
    py.python_param.module, py.python_param.layer = "evil_layer", "Evil"
    param.frozen.format_version = 1
    path = tmp_path / "evil.nf"
    path.write_bytes(param.SerializeToString())
    with pytest.raises(ConfigError, match='layer "boom" is a Python layer'):
        load_frozen(path)
    assert not marker.exists() and "evil_layer" not in sys.modules
    # Freezing such a net is refused too, before its module is imported.
    prototxt = tmp_path / "evil.prototxt"
    del param.layer[1:]
    prototxt.write_text(str(pb.NetParameter(name="evil", layer=[param.layer[0], py])))
    with pytest.raises(ConfigError, match="Python layer"):
        freeze(prototxt, path, tmp_path / "out.nf", Preprocess())
    assert not marker.exists()


def test_freeze_refuses_to_overwrite_and_checks_labels(resnet_files, tmp_path):
    model, weights = resnet_files
    out = tmp_path / "m.nf"
    out.write_text("keep me")
    with pytest.raises(ConfigError, match="--overwrite"):
        freeze(model, weights, out, Preprocess())
    assert out.read_text() == "keep me"
    with pytest.raises(ConfigError, match="3 labels .* 10 classes"):
        freeze(model, weights, out, Preprocess(), labels=["a", "b", "c"], overwrite=True)
    freeze(model, weights, out, Preprocess(), overwrite=True)
    assert is_frozen_file(out)


def test_a_plain_caffemodel_is_not_a_frozen_model(resnet_files):
    _, weights = resnet_files
    with pytest.raises(DataError, match="not a frozen model"):
        load_frozen(weights)


def test_training_nets_with_data_layers_cannot_be_frozen(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    with pytest.raises(ConfigError, match="self-contained"):
        freeze(root / "configs" / "lenet_train_test.prototxt", tmp_path / "w", tmp_path / "o.nf",
               Preprocess())


def test_python_layer_in_a_frozen_file_runs_when_told(tmp_path, monkeypatch):
    (tmp_path / "nf_frozen_told.py").write_text(
        "class Double:\n    def setup(self, b, t): pass\n"
        "    def reshape(self, b, t): t[0].reshape(*b[0].data.shape)\n"
        "    def forward(self, b, t): t[0].data[...] = 2 * b[0].data\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    param = pb.NetParameter(name="told")
    data = param.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add().dim.extend([1, 1, 2, 2])
    py = param.layer.add(name="double", type="Python", bottom=["data"], top=["out"])
    py.python_param.module, py.python_param.layer = "nf_frozen_told", "Double"
    param.frozen.format_version = 1
    path = tmp_path / "told.nf"
    path.write_bytes(param.SerializeToString())
    monkeypatch.setenv("NETFORGE_ALLOW_PYTHON_LAYERS", "1")
    try:
        net = load_frozen(path).net
        x = np.arange(4.0).reshape(1, 1, 2, 2)
        np.testing.assert_array_equal(net.forward(data=x)["out"], 2 * x)
    finally:
        sys.modules.pop("nf_frozen_told", None)

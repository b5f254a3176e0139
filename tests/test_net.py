"""The pycaffe-shaped Python API (SPEC §4): Net views, forward with start/end, forward_all,
backward with top diffs, reshape, save/copy_from, set_input_arrays, Classifier, Layer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import netforge
from netforge.errors import ConfigError, ShapeError

NET = """
name: "api"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture()
def net_file(tmp_path):
    path = tmp_path / "api.prototxt"
    path.write_text(NET)
    return path


def reference(net, x):
    """conv (valid 3×3) -> ReLU -> fc -> softmax, in plain numpy."""
    w, b = (blob.data for blob in net.params["conv"])
    conv = np.zeros((len(x), 2, 2, 2))
    for i in range(2):
        for j in range(2):
            patch = x[:, :, i:i + 3, j:j + 3].reshape(len(x), -1)
            conv[:, :, i, j] = patch @ w.reshape(2, -1).T + b
    hidden = np.maximum(conv, 0).reshape(len(x), -1)
    wf, bf = (blob.data for blob in net.params["fc"])
    logits = hidden @ wf.T + bf
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.maximum(conv, 0), logits, e / e.sum(axis=1, keepdims=True)


def test_views_and_forward_with_start_and_end(net_file):
    net = netforge.Net(str(net_file), netforge.TEST, seed=0)
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert list(net.blobs) == ["data", "conv", "fc", "prob"]
    assert list(net.params) == ["conv", "fc"]
    assert [p.shape for p in net.params["conv"]] == [(2, 3, 3, 3), (2,)]
    assert list(net.layer_dict) == ["data", "conv", "relu", "fc", "prob"]
    assert net.top_names["relu"] == ["conv"] and net.bottom_names["fc"] == ["conv"]
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 4)).astype(np.float32)
    hidden, logits, probs = reference(net, x)
    out = net.forward(data=x)
    np.testing.assert_allclose(out["prob"], probs, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["conv"].data, hidden, rtol=1e-5, atol=1e-6)
    # Up to "fc" only: returns fc's top (plus extra blobs asked for).
    net.blobs["prob"].data[...] = 0
    partial = net.forward(end="fc", blobs=["conv"])
    assert set(partial) == {"fc", "conv"}
    np.testing.assert_allclose(partial["fc"], logits, rtol=1e-5, atol=1e-6)
    assert not net.blobs["prob"].data.any()
    # From "prob" on: only the softmax runs, on whatever fc holds.
    net.blobs["fc"].data[...] = 0
    np.testing.assert_allclose(net.forward(start="prob")["prob"], np.full((2, 3), 1 / 3))
    with pytest.raises(ConfigError, match='no layer named "nope"'):
        net.forward(start="nope")


def test_forward_all_pads_the_last_batch_and_reshape_changes_the_batch(net_file):
    net = netforge.Net(str(net_file), "test", seed=0)
    x = np.random.default_rng(2).normal(size=(5, 3, 4, 4)).astype(np.float32)
    probs = net.forward_all(data=x)["prob"]
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs, reference(net, x)[2], rtol=1e-5)
    with pytest.raises(ShapeError, match="net.reshape"):
        net.forward(data=x)
    net.blobs["data"].reshape(5, 3, 4, 4)
    net.reshape()
    assert net.blobs["prob"].shape == (5, 3)
    # float32 GEMMs of other shapes (batch 5, or its slices on 2 cores) round differently
    np.testing.assert_allclose(net.forward(data=x)["prob"], probs, rtol=1e-5, atol=1e-9)


def test_backward_from_output_diffs(net_file):
    # A deploy net has no loss, so as in Caffe only force_backward makes layers backpropagate.
    net_file.write_text("force_backward: true\n" + NET)
    net = netforge.Net(str(net_file), "test", seed=0)
    x = np.random.default_rng(3).normal(size=(2, 3, 4, 4)).astype(np.float32)
    net.forward(data=x)
    # d(sum of fc)/d(fc) = 1: the diff reaching conv's output is the fc weights' column sums,
    # masked by the ReLU.
    diffs = net.backward(start="fc", diffs=["conv"], fc=np.ones((2, 3), np.float32))
    hidden = reference(net, x)[0]
    expected = np.broadcast_to(net.params["fc"][0].data.sum(axis=0), (2, 8)).reshape(
        hidden.shape) * (hidden > 0)
    np.testing.assert_allclose(diffs["conv"], expected, rtol=1e-5, atol=1e-6)
    assert "data" in diffs


def test_save_copy_from_and_legacy_argument_order(net_file, tmp_path):
    net = netforge.Net(str(net_file), "test", seed=0)
    net.save(str(tmp_path / "w.caffemodel"))
    other = netforge.Net(str(net_file), "test", seed=99)
    assert not np.array_equal(other.params["fc"][0].data, net.params["fc"][0].data)
    other.copy_from(str(tmp_path / "w.caffemodel"))
    np.testing.assert_array_equal(other.params["fc"][0].data, net.params["fc"][0].data)
    # pycaffe's deprecated Net(prototxt, caffemodel, phase)
    legacy = netforge.Net(str(net_file), str(tmp_path / "w.caffemodel"), netforge.TEST)
    assert legacy.phase == "TEST"
    np.testing.assert_array_equal(legacy.params["conv"][0].data, net.params["conv"][0].data)


def test_set_input_arrays_feeds_memory_data(tmp_path):
    path = tmp_path / "mem.prototxt"
    path.write_text("""
    layer { name: "mem" type: "MemoryData" top: "data" top: "label"
      memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 } }
    """)
    net = netforge.Net(str(path), "test")
    data = np.arange(8, dtype=np.float32).reshape(4, 1, 1, 2)
    net.set_input_arrays(data, np.array([0, 1, 2, 3], np.float32))
    np.testing.assert_array_equal(net.forward()["data"], data[:2])
    np.testing.assert_array_equal(net.forward()["label"], [2, 3])
    no_memory = tmp_path / "plain.prototxt"
    no_memory.write_text(NET)
    with pytest.raises(ConfigError, match="no MemoryData layer"):
        netforge.Net(str(no_memory), "test").set_input_arrays(data, np.zeros(4))


def test_classifier_centre_crop_and_oversample(net_file, tmp_path):
    net = netforge.Net(str(net_file), "test", seed=0)
    net.save(str(tmp_path / "w.caffemodel"))
    rgb = np.random.default_rng(4).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    image = netforge.io.load_image(str(tmp_path / "im.png"))
    mean = np.array([10.0, 20.0, 30.0])
    clf = netforge.Classifier(str(net_file), str(tmp_path / "w.caffemodel"), image_dims=(6, 6),
                              mean=mean, raw_scale=255, channel_swap=(2, 1, 0),
                              input_scale=0.01)
    # By hand: the centre 4×4 crop at offset 1, BGR, 0..255, minus mean, times 0.01.
    bgr = rgb[:, :, ::-1].astype(np.float64)

    def prepared(top, left, mirror=False):
        crop = bgr[top:top + 4, left:left + 4]
        crop = crop[:, ::-1] if mirror else crop
        return ((crop - mean) * 0.01).transpose(2, 0, 1)

    centre = clf.predict([image], oversample=False)
    np.testing.assert_allclose(centre, reference(net, prepared(1, 1)[None])[2], rtol=1e-4)
    crops = [prepared(t, s, m) for m in (False, True)
             for t, s in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))]
    averaged = reference(net, np.stack(crops))[2].mean(axis=0)
    np.testing.assert_allclose(clf.predict([image])[0], averaged, rtol=1e-4)
    # one image (H, W, K) rather than a list: pycaffe users write predict(im) too
    single = clf.predict(image, oversample=False)
    assert single.shape == centre.shape == (1, centre.shape[1])
    np.testing.assert_allclose(single, centre, rtol=1e-6)
    two = clf.predict(np.stack([image, image]), oversample=False)  # an (N, H, W, K) array
    np.testing.assert_allclose(two, np.concatenate([centre, centre]), rtol=1e-6)


def test_layer_base_class_and_exports():
    assert netforge.Layer.__name__ == "UserLayer"
    for name in ("Net", "Classifier", "io", "get_solver", "load_frozen", "set_mode_cpu"):
        assert hasattr(netforge, name)
    assert "Convolution" in netforge.layer_type_list()

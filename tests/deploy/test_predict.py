"""`netforge predict` on generated PNGs: the three output formats, folder recursion,
unreadable images reported and skipped, exit codes; and the preprocessing pipeline against
a hand computation (crop, channel order, raw scale, mean, scale, 10 crops)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netforge.deploy.frozen import freeze
from netforge.deploy.predict import Predictor, find_images, open_model
from netforge.deploy.preprocess import Preprocess
from netforge.net import Net

ROOT = Path(__file__).resolve().parents[2]

GREY_NET = """
name: "tiny_grey"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 4 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def run(*args):
    env = dict(os.environ, NETFORGE_DEBUG="0")
    return subprocess.run([sys.executable, "-m", "netforge", "-q", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory):
    """A 1-channel net with random weights, frozen with scale 1/256 and labels; and a folder
    tree of 8×8 grey PNGs (one of them unreadable)."""
    root = tmp_path_factory.mktemp("predict")
    model = root / "net.prototxt"
    model.write_text(GREY_NET)
    net = Net(model, "test")
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(0, 0.3, blob.shape)
    net.save(root / "net.caffemodel")
    (root / "labels.txt").write_text("cat\ndog\nbird\n")
    freeze(model, root / "net.caffemodel", root / "net.nf", Preprocess(scale=0.00390625),
           labels=["cat", "dog", "bird"])
    images = root / "images"
    for rel in ["b.png", "a/x.png", "a/sub/y.png", "c/z.png", "c/w.png"]:
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    (images / "a" / "broken.png").write_text("not an image")
    return root


def expected_probabilities(root: Path, paths) -> np.ndarray:
    """The net run by hand on the PNG pixels times 1/256 (grey, already 8×8)."""
    net = Net(root / "net.prototxt", "test", weights=root / "net.caffemodel")
    x = np.stack([np.asarray(Image.open(p), np.float32)[None] / 256.0 for p in paths])
    return net.forward_all(data=x)["prob"]


def test_folders_are_searched_recursively_in_sorted_order(grey_model):
    images = grey_model / "images"
    found = [p.relative_to(images).as_posix() for p in find_images([images])]
    assert found == ["a/broken.png", "a/sub/y.png", "a/x.png", "b.png", "c/w.png", "c/z.png"]
    given = find_images([images / "c" / "z.png", images / "b.png"])
    assert [p.name for p in given] == ["z.png", "b.png"]  # files keep the order given


def test_json_lines_match_the_net_and_unreadable_images_are_reported(grey_model):
    result = run("predict", str(grey_model / "net.nf"), str(grey_model / "images"),
                 "--format", "json", "--top-k", "2", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 5
    skipped = [line for line in result.stderr.splitlines() if "warning: skipped" in line]
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    paths = [Path(row["image"]) for row in rows]
    expected = expected_probabilities(grey_model, paths)
    labels = ["cat", "dog", "bird"]
    for row, probs in zip(rows, expected, strict=True):
        order = np.argsort(-probs)[:2]
        assert [t["index"] for t in row["top"]] == order.tolist()
        assert [t["label"] for t in row["top"]] == [labels[i] for i in order]
        np.testing.assert_allclose([t["probability"] for t in row["top"]], probs[order],
                                   atol=2e-6)


def test_table_and_csv_formats(grey_model):
    image = grey_model / "images" / "b.png"
    table = run("predict", str(grey_model / "net.nf"), str(image), "--top-k", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["image", "rank", "class", "probability"]
    assert len(lines) == 4 and lines[1].startswith(str(image))
    cells = [re.search(r"\s(\d)\s+(\w+) \((\d)\)\s+([\d.]+)$", line).groups()
             for line in lines[1:]]
    probs = expected_probabilities(grey_model, [image])[0]
    order = np.argsort(-probs)
    assert [c[0] for c in cells] == ["1", "2", "3"]
    assert [c[1] for c in cells] == [["cat", "dog", "bird"][i] for i in order]
    assert [int(c[2]) for c in cells] == order.tolist()
    assert [float(c[3]) for c in cells] == pytest.approx(probs[order], abs=1e-4)
    # A prototxt + weights, labels from a file: the same answer as CSV.
    result = run("predict", str(grey_model / "net.prototxt"), str(image), "--weights",
                 str(grey_model / "net.caffemodel"), "--scale", "0.00390625", "--labels",
                 str(grey_model / "labels.txt"), "--format", "csv", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["image", "rank", "index", "label", "probability"]
    best = int(np.argmax(probs))
    assert rows[1][:4] == [str(image), "1", str(best), ["cat", "dog", "bird"][best]]
    assert float(rows[1][4]) == pytest.approx(probs[best], abs=1e-6)


def test_exit_codes_when_nothing_can_be_predicted(grey_model, tmp_path):
    result = run("predict", str(grey_model / "net.nf"),
                 str(grey_model / "images" / "a" / "broken.png"))
    assert result.returncode == 1 and "broken.png" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run("predict", str(grey_model / "net.nf"), str(tmp_path / "empty"))
    assert result.returncode == 2 and "no image files" in result.stderr
    result = run("predict", str(grey_model / "net.prototxt"), str(grey_model / "images"))
    assert result.returncode == 2 and "--weights" in result.stderr


# -- the preprocessing pipeline, by hand -----------------------------------------------------

COLOUR_NET = """
name: "tiny_colour"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 4 } }
"""


@pytest.fixture()
def colour_image(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    (tmp_path / "net.prototxt").write_text(COLOUR_NET)
    return tmp_path, rgb.astype(np.float32)


def test_centre_crop_channel_order_raw_scale_mean_and_scale(colour_image):
    root, rgb = colour_image
    settings = Preprocess(input="data", raw_scale=2.0, mean_values=(0.1, 0.2, 0.3), scale=4.0,
                          image_dims=(8, 9)).bind((1, 3, 6, 6))
    out = np.empty((1, 3, 6, 6), np.float32)
    settings.fill(settings.load(root / "img.png"), out)
    top, left = (8 - 6) // 2, (9 - 6) // 2
    bgr = rgb[top:top + 6, left:left + 6, ::-1].transpose(2, 0, 1)
    expected = (bgr / 255.0 * 2.0 - np.array([0.1, 0.2, 0.3])[:, None, None]) * 4.0
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)
    settings.channel_order = "rgb"
    settings.fill(settings.load(root / "img.png"), out)
    rgb_expected = (rgb[top:top + 6, left:left + 6].transpose(2, 0, 1) / 255.0 * 2.0
                    - np.array([0.1, 0.2, 0.3])[:, None, None]) * 4.0
    np.testing.assert_allclose(out[0], rgb_expected, rtol=1e-5, atol=1e-5)


def test_ten_crops_with_a_mean_image_at_image_dims(colour_image):
    root, rgb = colour_image
    mean = np.random.default_rng(4).uniform(0, 50, (3, 8, 9)).astype(np.float32)
    settings = Preprocess(input="data", mean_image=mean, image_dims=(8, 9)).bind((1, 3, 6, 6))
    out = np.empty((10, 3, 6, 6), np.float32)
    settings.fill(settings.load(root / "img.png"), out, oversample=True)
    full = rgb[:, :, ::-1].transpose(2, 0, 1) - mean  # Caffe: mean at the stored size
    corners = [(0, 0), (0, 3), (2, 0), (2, 3), (1, 1)]
    for k, (top, left) in enumerate(corners):
        crop = full[:, top:top + 6, left:left + 6]
        np.testing.assert_allclose(out[k], crop, atol=1e-4)
        np.testing.assert_allclose(out[5 + k], crop[:, :, ::-1], atol=1e-4)


def test_oversampled_prediction_averages_the_ten_crops(colour_image):
    root, _ = colour_image
    net = Net(root / "net.prototxt", "test", seed=5)
    settings = Preprocess(input="data", image_dims=(8, 9))
    predictor = Predictor(net, settings, batch_size=2, oversample=True)
    [prediction] = list(predictor.run([root / "img.png"], top_k=4))
    crops = np.empty((10, 3, 6, 6), np.float32)
    settings.fill(settings.load(root / "img.png"), crops, oversample=True)
    w, b = (blob.data for blob in net.params["fc"])
    expected = (crops.reshape(10, -1) @ w.T + b).mean(axis=0)
    got = {index: score for index, _, score in prediction.top}
    np.testing.assert_allclose([got[i] for i in range(4)], expected, rtol=1e-4, atol=1e-4)


def test_open_model_rejects_weights_for_a_frozen_model(grey_model):
    from netforge.errors import ConfigError

    with pytest.raises(ConfigError, match="holds its weights"):
        open_model(grey_model / "net.nf", weights=grey_model / "net.caffemodel")
    net, settings, labels = open_model(grey_model / "net.nf", scale=1.0)
    assert settings.scale == 1.0 and labels == ["cat", "dog", "bird"]  # flags override

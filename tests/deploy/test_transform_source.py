"""freeze --transform-from: a net trained with crop_size 28 on 32×32 images is deployed as
its test net saw them (resize to the stored size, centre crop), with the same probabilities
as the test net; a plain resize to 28 would not give them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netforge.cli.main import main
from netforge.data.convert import convert_images
from netforge.data.stores import LmdbReader
from netforge.net import Net

LAYERS = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 5 stride: 2
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


@pytest.fixture
def trained(tmp_path):
    rng = np.random.default_rng(0)
    for label in "abc":
        folder = tmp_path / "images" / label
        folder.mkdir(parents=True)
        for i in range(3):  # structure everywhere, so a shifted or squeezed view differs
            pixels = rng.integers(0, 256, size=(32, 32)).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    convert_images(tmp_path / "images", tmp_path / "db", gray=True, seed=0)
    train_val = tmp_path / "train_val.prototxt"
    train_val.write_text(
        'layer { name: "mnist" type: "Data" top: "data" top: "label" '
        "transform_param { scale: 0.00390625 crop_size: 28 } "
        f'data_param {{ source: "{tmp_path / "db"}" batch_size: 9 backend: LMDB }} }}\n'
        + LAYERS)
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text('layer { name: "data" type: "Input" top: "data" '
                      "input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }\n" + LAYERS)
    weights = tmp_path / "w.caffemodel"
    Net(str(deploy), "test", seed=5).save(str(weights))
    return tmp_path, train_val, deploy, weights


def _test_net_probabilities(train_val, weights, db):
    net = Net(str(train_val), "test", weights=str(weights))
    probs = np.array(net.forward()["prob"])
    with LmdbReader(db) as reader:
        keys = [key.decode().split("_", 1)[1] for key, _ in reader]
    net.close()
    return dict(zip(keys, probs, strict=True))


def _frozen_probabilities(capsys, root, frozen):
    images = sorted((root / "images").rglob("*.png"))
    out, _ = _freeze(capsys, ["-q", "predict", str(frozen), *map(str, images), "--format",
                              "json", "--top-k", "3"])
    result = {}
    for line in out.splitlines():
        record = json.loads(line)
        probs = np.zeros(3)
        for entry in record["top"]:
            probs[entry["index"]] = entry["probability"]
        result[str(Path(record["image"]).relative_to(root / "images"))] = probs
    return result


def _freeze(capsys, args):
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None)
    return capsys.readouterr()


def test_freeze_from_transform_param_matches_the_test_net(capsys, trained):
    root, train_val, deploy, weights = trained
    expected = _test_net_probabilities(train_val, weights, root / "db")
    frozen = root / "m.nf"
    _, err = _freeze(capsys, ["-q", "freeze", "--model", str(deploy), "--weights",
                              str(weights), "-o", str(frozen), "--transform-from",
                              str(train_val)])
    assert "resize to 32×32 (the images stored in" in err and "centre crop 28×28" in err
    assert "scale 0.00390625" in err
    got = _frozen_probabilities(capsys, root, frozen)
    assert sorted(got) == sorted(expected)
    for name, probs in expected.items():
        np.testing.assert_allclose(got[name], probs, atol=2e-6)  # JSON keeps 6 digits

    # the old way, a plain resize of 32×32 to 28×28, does not give the test net's answers
    plain = root / "plain.nf"
    _freeze(capsys, ["-q", "freeze", "--model", str(deploy), "--weights", str(weights),
                     "-o", str(plain), "--scale", "0.00390625"])
    off = _frozen_probabilities(capsys, root, plain)
    assert max(np.abs(off[n] - expected[n]).max() for n in expected) > 1e-3


def test_a_mean_file_of_another_size_is_resized_with_a_warning(capsys, trained, tmp_path):
    from netforge.data.records import save_mean_file

    _, _, deploy, weights = trained
    mean = tmp_path / "mean.binaryproto"
    save_mean_file(mean, np.full((1, 1, 40, 40), 7.0, np.float32))
    _, err = _freeze(capsys, ["freeze", "--model", str(deploy), "--weights", str(weights),
                              "-o", str(tmp_path / "m.nf"), "--mean-file", str(mean)])
    assert "the mean image is 40×40 but the input is 28×28" in err

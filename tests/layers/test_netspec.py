"""pycaffe's NetSpec: Caffe's own examples, transcribed to netforge names, write the nets Caffe
wrote (compared message by message) and those nets train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import netforge
from netforge import config
from netforge import layers as L
from netforge import netforge_pb2 as pb
from netforge import params as P

ROOT = Path(__file__).resolve().parents[2]


def lenet(lmdb, batch_size):
    """Caffe's examples/01-learning-lenet.ipynb ``lenet()``, with ``caffe`` -> ``netforge``."""
    n = netforge.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


def caffe_lenet_text(source: str, batch_size: int) -> str:
    """What Caffe's lenet() writes (its examples/mnist/lenet_auto_train.prototxt, with the
    notebook's blob names fc1/score), written out field by field."""
    def conv(name, bottom, n):
        return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                f'convolution_param {{ num_output: {n} kernel_size: 5 '
                'weight_filler { type: "xavier" } } }\n')

    def pool(name, bottom):
        return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
                "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n")

    def ip(name, bottom, n):
        return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
                f'inner_product_param {{ num_output: {n} '
                'weight_filler { type: "xavier" } } }\n')

    return ('layer { name: "data" type: "Data" top: "data" top: "label" '
            "transform_param { scale: 0.00392156862745 } "
            f'data_param {{ source: "{source}" batch_size: {batch_size} backend: LMDB }} }}\n'
            + conv("conv1", "data", 20) + pool("pool1", "conv1") + conv("conv2", "pool1", 50)
            + pool("pool2", "conv2") + ip("fc1", "pool2", 500)
            + 'layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }\n'
            + ip("score", "fc1", 10)
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" '
              'top: "loss" }\n')


def test_caffe_lenet_function_writes_caffes_prototxt():
    written = lenet("mnist/mnist_train_lmdb", 64)
    expected = config.parse_text(caffe_lenet_text("mnist/mnist_train_lmdb", 64), pb.NetParameter())
    assert len(written.layer) == len(expected.layer)
    for mine, theirs in zip(written.layer, expected.layer, strict=True):
        assert mine == theirs, f"layer {theirs.name}:\n{mine}\n!=\n{theirs}"
    # str() is protobuf text that reads back to the same message (the notebook writes it so)
    assert config.parse_text(str(written), pb.NetParameter()) == written


def lenet_train_test(phase):
    """configs/lenet_train_test.prototxt written with NetSpec, one phase at a time."""
    train = phase == netforge.TRAIN
    n = netforge.NetSpec()
    n.data, n.label = L.Data(
        name="mnist", include=dict(phase=phase), ntop=2,
        transform_param=dict(scale=0.00390625, crop_size=28),
        source="demo_run/mnist/train" if train else "demo_run/mnist/val",
        batch_size=64 if train else 100, backend=P.Data.LMDB)
    learned = dict(param=[dict(lr_mult=1), dict(lr_mult=2)],
                   weight_filler=dict(type="xavier"), bias_filler=dict(type="constant"))
    n.conv1 = L.Convolution(n.data, num_output=20, kernel_size=5, stride=1, **learned)
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, num_output=50, kernel_size=5, stride=1, **learned)
    n.pool2 = L.Pooling(n.conv2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, **learned)
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.ip1, num_output=10, **learned)
    if not train:
        n.accuracy = L.Accuracy(n.ip2, n.label, include=dict(phase=netforge.TEST))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


@pytest.mark.parametrize("phase", [netforge.TRAIN, netforge.TEST])
def test_netspec_writes_the_lenet_config_layer_by_layer(phase):
    shipped = config.load_net_param(ROOT / "configs" / "lenet_train_test.prototxt")
    state = config.make_state(phase.upper(), 0, ())
    expected = config.filter_net(shipped, state, "config")
    written = config.filter_net(lenet_train_test(phase), state, "netspec")
    assert [layer.name for layer in written.layer] == [layer.name for layer in expected.layer]
    for mine, theirs in zip(written.layer, expected.layer, strict=True):
        assert mine == theirs, f"layer {theirs.name}:\n{mine}\n!=\n{theirs}"


def _digit_like_lmdb(root: Path) -> Path:
    """28x28 grey images of 3 classes, each a bright bar in its own row band, plus noise."""
    from netforge.data.convert import convert_images

    rng = np.random.default_rng(0)
    for label in range(3):
        folder = root / "images" / str(label)
        folder.mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 60, size=(28, 28))
            pixels[4 + 8 * label:10 + 8 * label, 4:24] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    convert_images(root / "images", root / "db", gray=True, seed=1)
    return root / "db"


def test_caffe_lenet_netspec_trains(tmp_path):
    db = _digit_like_lmdb(tmp_path)
    net_path = tmp_path / "lenet_auto_train.prototxt"
    net_path.write_text(str(lenet(str(db), 8)))
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(f'train_net: "{net_path}"\nbase_lr: 0.01\nmomentum: 0.9\n'
                           'lr_policy: "fixed"\nmax_iter: 40\ndisplay: 0\nrandom_seed: 1\n'
                           f'snapshot_prefix: "{tmp_path}/lenet"\nsnapshot_after_train: false\n')
    solver = netforge.SGDSolver(str(solver_path))
    losses = []
    for _ in range(40):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.mean(losses[:4]) > 0.9  # about ln 10 for random weights over 10 outputs
    assert np.mean(losses[-4:]) < 0.25 * np.mean(losses[:4])


def test_layers_and_params_objects():
    assert P.Pooling.AVE == pb.PoolingParameter.AVE
    with pytest.raises(AttributeError, match="no value"):
        _ = P.Pooling.MEDIAN
    top = L.Convolution(L.Input(shape=dict(dim=[1, 1, 4, 4])), num_output=2, kernel_size=3)
    net = top.to_proto()  # automatic names: Type + counter
    assert [(layer.name, list(layer.top)) for layer in net.layer] == [
        ("Input1", ["Input1"]), ("Convolution1", ["Convolution1"])]
    with pytest.raises(AttributeError, match='no field "kernal_size"'):
        L.Convolution(L.Input(), kernal_size=3).to_proto()
    silence = L.Silence(L.Input(), ntop=0)
    assert netforge.to_proto(silence.tops[0] if silence.tops else L.Input()).layer[0].type
    assert netforge.caffe_pb2 is pb
    from netforge import caffe_pb2
    assert caffe_pb2.NetParameter is pb.NetParameter and caffe_pb2.TRAIN == pb.TRAIN


@pytest.mark.parametrize("cls, rule", [("SGDSolver", "SGD"), ("AdamSolver", "Adam"),
                                       ("NesterovSolver", "Nesterov"),
                                       ("AdaDeltaSolver", "AdaDelta")])
def test_pycaffe_solver_classes_choose_their_rule(tmp_path, cls, rule):
    net = tmp_path / "n.prototxt"
    net.write_text('layer { name: "in" type: "Input" top: "x" '
                   "input_param { shape { dim: 2 dim: 3 } } }\n"
                   'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                   'inner_product_param { num_output: 2 } }\n'
                   'layer { name: "loss" type: "Reduction" bottom: "y" top: "l" loss_weight: 1 }\n')
    path = tmp_path / "s.prototxt"
    path.write_text('train_net: "n.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\ntype: "SGD"\n'
                    "momentum: 0.5\n")
    solver = getattr(netforge, cls)(str(path))
    assert solver.param.type == rule
    assert type(solver.rule).__name__.lower() == rule.lower()

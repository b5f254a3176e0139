"""The model zoo (configs/zoo): each net builds from its file with Caffe's blob shapes, runs
forward and backward, and its train_val file filters into the TRAIN and TEST nets Caffe makes.

Expected shapes and parameter totals are the published figures for these nets (ResNet-50
and DenseNet-121 from torchvision's totals plus what Caffe stores on top: BatchNorm's two
running statistics per channel and scale factor per layer, and ResNet's conv1 bias).
"""

from pathlib import Path

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.inspect.gradient_check import directional_error
from netforge.inspect.summary import set_batch_size
from netforge.net import Net

ZOO = Path(__file__).resolve().parents[1] / "configs" / "zoo"

# Blob shapes per sample (the batch axis is prepended), from Caffe's logs of these nets.
DEPLOY_SHAPES = {
    "alexnet": {
        "conv1": (96, 55, 55), "norm1": (96, 55, 55), "pool1": (96, 27, 27),
        "conv2": (256, 27, 27), "pool2": (256, 13, 13), "conv5": (256, 13, 13),
        "pool5": (256, 6, 6), "fc6": (4096,), "fc8": (1000,), "prob": (1000,),
    },
    "caffenet": {
        "pool1": (96, 27, 27), "norm1": (96, 27, 27), "conv2": (256, 27, 27),
        "norm2": (256, 13, 13), "pool5": (256, 6, 6), "fc7": (4096,), "prob": (1000,),
    },
    "googlenet": {
        "conv1/7x7_s2": (64, 112, 112), "pool1/3x3_s2": (64, 56, 56),
        "pool2/3x3_s2": (192, 28, 28), "inception_3a/output": (256, 28, 28),
        "inception_3b/output": (480, 28, 28), "pool3/3x3_s2": (480, 14, 14),
        "inception_4a/output": (512, 14, 14), "inception_4d/output": (528, 14, 14),
        "inception_4e/output": (832, 14, 14), "pool4/3x3_s2": (832, 7, 7),
        "inception_5b/output": (1024, 7, 7), "pool5/7x7_s1": (1024, 1, 1),
        "loss3/classifier": (1000,), "prob": (1000,),
    },
    "vgg16": {
        "conv1_2": (64, 224, 224), "pool1": (64, 112, 112), "pool4": (512, 14, 14),
        "pool5": (512, 7, 7), "fc6": (4096,), "fc8": (1000,), "prob": (1000,),
    },
    "resnet50": {
        "conv1": (64, 112, 112), "pool1": (64, 56, 56), "res2c": (256, 56, 56),
        "res3a_branch2a": (128, 28, 28), "res3d": (512, 28, 28), "res4f": (1024, 14, 14),
        "res5c": (2048, 7, 7), "pool5": (2048, 1, 1), "fc1000": (1000,), "prob": (1000,),
    },
    # SqueezeNet v1.1 at 227: 113 → pool 56 → pool 28 → pool 14 (Caffe pools round up).
    "squeezenet1.1": {
        "conv1": (64, 113, 113), "pool1": (64, 56, 56), "fire2/concat": (128, 56, 56),
        "pool3": (128, 28, 28), "fire5/concat": (256, 28, 28), "pool5": (256, 14, 14),
        "fire9/concat": (512, 14, 14), "conv10": (1000, 14, 14), "pool10": (1000, 1, 1),
        "prob": (1000, 1, 1),
    },
    # pool1 rounds down (ceil_mode: false): 112 → 56, not Caffe's default 57.
    "densenet121": {
        "conv1": (64, 112, 112), "pool1": (64, 56, 56), "concat_2_6": (256, 56, 56),
        "pool2": (128, 28, 28), "concat_3_12": (512, 28, 28), "pool3": (256, 14, 14),
        "concat_4_24": (1024, 14, 14), "pool4": (512, 7, 7), "concat_5_16": (1024, 7, 7),
        "pool5": (1024, 1, 1), "fc6": (1000, 1, 1),
    },
}


def _densenet121_bn_channels() -> int:
    """Channels summed over DenseNet-121's 121 BatchNorm layers (growth 32, 4×32 bottleneck)."""
    total, channels = 64, 64  # conv1/bn
    for depth in (6, 12, 24, 16):
        for i in range(depth):
            total += (channels + 32 * i) + 128  # x1/bn on the concatenation, x2/bn
        channels += 32 * depth
        total += channels  # the block's closing BatchNorm
        channels //= 2
    return total


PARAM_TOTALS = {
    "alexnet": 60_965_224,
    "caffenet": 60_965_224,
    "googlenet": 6_998_552,
    "vgg16": 138_357_544,
    "squeezenet1.1": 1_235_496,
    # torchvision's totals count BatchNorm's γ/β (Caffe's Scale) but not its statistics.
    "resnet50": 25_557_032 + 64 + 2 * 26_560 + 53,
    "densenet121": 7_978_856 + 2 * _densenet121_bn_channels() + 121,
}

# Full-size float32 forward+backward in the test suite for these; the others are too slow
# for CI on 2 cores at full size and run forward+backward elsewhere: GoogLeNet, ResNet-50
# and DenseNet-121 through their train_val nets below (DenseNet at a reduced input size),
# VGG-16 (plain Convolution/ReLU/Pooling/InnerProduct) in tools/bench/zoo.py.
FORWARD_BACKWARD = ["alexnet", "squeezenet1.1"]


def load(name: str, batch: int = 1, size: int | None = None) -> pb.NetParameter:
    """The zoo file's NetParameter with the given batch size (and square input size)."""
    param = config.load_net_param(ZOO / f"{name}.prototxt")
    set_batch_size(param, batch)
    if size is not None:
        for layer in param.layer:
            for shape in layer.input_param.shape:
                shape.dim[2] = shape.dim[3] = size
    return param


def randomize(net: Net, seed: int = 0) -> None:
    """He-scaled weights, and BatchNorm statistics near those of a random input, so that
    activations stay O(1) through a deep net (the deploy files have no fillers: their
    weights would all be 0; and with arbitrary statistics ResNet's logits reach 1e5 and
    its softmax saturates, which would make every gradient 0)."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type in ("Convolution", "InnerProduct"):
            weight = blobs[0]
            fan_in = weight.count // weight.shape[0]
            weight.data[...] = rng.standard_normal(weight.shape, np.float32)
            weight.data *= np.sqrt(2.0 / fan_in)
            for bias in blobs[1:]:
                bias.data[...] = rng.normal(0, 0.01, bias.shape)
        elif layer.type == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].shape)
            for bias in blobs[1:]:
                bias.data[...] = rng.normal(0, 0.1, bias.shape)
    calibrate_batch_norm(net, rng)


def calibrate_batch_norm(net: Net, rng: np.random.Generator) -> None:
    """One forward pass of a random input, layer by layer, setting each BatchNorm's stored
    statistics [mean sum, variance sum, factor] to (roughly) those of its actual input."""
    if net.phase != "TEST" or not any(layer.type == "BatchNorm" for layer in net.layers):
        return  # TRAIN-phase BatchNorm normalises with batch statistics instead
    data = net.blobs["data"]
    data.data[...] = rng.standard_normal(data.shape)
    for step in net.plan.steps:
        if step.layer.type == "BatchNorm":
            x = step.bottoms[0].data
            axes = (0, *range(2, x.ndim))
            mean, var = x.mean(axis=axes), np.maximum(x.var(axis=axes), 1e-2)
            blobs = step.layer.blobs
            blobs[0].data[...] = mean + rng.normal(0, 0.1, mean.shape) * np.sqrt(var)
            blobs[1].data[...] = var * rng.uniform(0.5, 1.5, var.shape)
            blobs[2].data[...] = 1.0
        step.layer.forward(step.bottoms, step.tops)


def _first_conv(net: Net) -> str:
    return next(layer.name for layer in net.layers if layer.type == "Convolution")


# -- deploy nets -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(DEPLOY_SHAPES))
def deploy(request):
    """(name, net) at batch 1 with force_backward; built once per net."""
    name = request.param
    param = load(f"{name}_deploy")
    param.force_backward = True
    net = Net(param, "test", seed=0)
    yield name, net
    net.close()


def test_deploy_blob_shapes_equal_caffes(deploy):
    name, net = deploy
    for blob, shape in DEPLOY_SHAPES[name].items():
        assert net.blobs[blob].shape == (1, *shape), blob
    if name in PARAM_TOTALS:
        owned = {id(b): b.count for blobs in net.params.values() for b in blobs}
        assert sum(owned.values()) == PARAM_TOTALS[name]


@pytest.mark.parametrize("deploy", FORWARD_BACKWARD, indirect=True)
def test_deploy_forward_backward(deploy):
    _, net = deploy
    randomize(net)
    _forward_backward(net)


def _forward_backward(net: Net) -> None:
    """Forward a random image; backward from a random output gradient reaches the input
    and the first convolution's weights."""
    rng = np.random.default_rng(1)
    data = net.blobs["data"]
    out = net.forward(data=rng.standard_normal(data.shape).astype(np.float32))
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name
    if "prob" in out:
        np.testing.assert_allclose(out["prob"].reshape(len(out["prob"]), -1).sum(axis=1), 1.0,
                                   rtol=1e-4)
    for name in net.outputs:
        net.blobs[name].diff[...] = rng.standard_normal(net.blobs[name].shape)
    net.backward()
    assert np.all(np.isfinite(data.diff)) and np.abs(data.diff).sum() > 0
    weight_diff = net.params[_first_conv(net)][0].diff
    assert np.all(np.isfinite(weight_diff)) and np.abs(weight_diff).sum() > 0


@pytest.mark.parametrize("deploy", ["caffenet"], indirect=True)
def test_caffenet_uses_grouped_convolutions(deploy):
    _, net = deploy
    assert net.params["conv1"][0].shape == (96, 3, 11, 11)
    assert net.params["conv2"][0].shape == (256, 48, 5, 5)  # group 2: 96 / 2 inputs each
    assert net.params["conv3"][0].shape == (384, 256, 3, 3)
    assert net.params["conv4"][0].shape == (384, 192, 3, 3)
    assert net.params["conv5"][0].shape == (256, 192, 3, 3)


def test_legacy_headers_are_upgraded():
    vgg = config.load_net_param(ZOO / "vgg16_deploy.prototxt")  # V1 `layers`, input_dim
    assert not vgg.layers and vgg.layer[0].type == "Input"
    assert [layer.type for layer in vgg.layer[1:3]] == ["Convolution", "ReLU"]
    resnet = config.load_net_param(ZOO / "resnet50_deploy.prototxt")
    assert list(resnet.layer[0].input_param.shape[0].dim) == [1, 3, 224, 224]
    densenet = config.load_net_param(ZOO / "densenet121_deploy.prototxt")
    pool1 = next(layer for layer in densenet.layer if layer.name == "pool1")
    assert pool1.pooling_param.round_mode == pb.PoolingParameter.FLOOR


def _directional_check(name: str, size: int) -> None:
    """d(Σ out·g)/dx and /dW of the first conv along random directions, analytic vs finite
    differences, for the whole net in float64."""
    param = load(f"{name}_deploy", batch=1, size=size)
    param.force_backward = True
    net = Net(param, "test", dtype=np.float64, seed=0)
    randomize(net, seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(net.blobs["data"].shape)
    grads = {o: rng.standard_normal(net.blobs[o].shape) for o in net.outputs}
    weight = net.params[_first_conv(net)][0]

    def objective() -> float:
        out = net.forward(data=x)
        return float(sum((out[o] * g).sum() for o, g in grads.items()))

    at_x = objective()
    for o, g in grads.items():
        net.blobs[o].diff[...] = g
    net.backward()
    dx, dw = net.blobs["data"].diff.copy(), weight.diff.copy()

    for target, analytic in ((x, dx), (weight.data, dw)):
        direction = rng.standard_normal(target.shape)
        expected = (analytic * direction).sum()
        # the smallest of the central and the two one-sided differences (kink skipping)
        error, estimates = directional_error(objective, target, direction, expected,
                                             step_size=1e-7, at=at_x)
        assert error < 1e-5, (expected, estimates)


def test_squeezenet_backward_matches_finite_differences():
    _directional_check("squeezenet1.1", size=64)  # fully convolutional: any size ≥ 47


def test_densenet_backward_matches_finite_differences():
    _directional_check("densenet121", size=40)  # global pooling; 2×2 after pool4


# -- train_val nets ----------------------------------------------------------------------


def _names(param: pb.NetParameter, phase: str) -> dict[str, pb.LayerParameter]:
    filtered = config.filter_net(param, config.make_state(phase))
    return {layer.name: layer for layer in filtered.layer}


TRAIN_VAL = ["alexnet", "caffenet", "googlenet", "vgg16", "resnet50", "squeezenet1.1",
             "densenet121"]


@pytest.mark.parametrize("name", TRAIN_VAL)
def test_train_val_filters_into_train_and_test_nets(name):
    param = config.load_net_param(ZOO / f"{name}_train_val.prototxt")
    train, test = _names(param, "TRAIN"), _names(param, "TEST")
    assert train["data"].type == test["data"].type == "Data"
    assert "train" in train["data"].data_param.source
    assert "val" in test["data"].data_param.source
    assert train["data"].transform_param.crop_size == test["data"].transform_param.crop_size
    # Training and testing nets differ only in their data layer and TEST-only metrics.
    test_only = {n for n, layer in test.items() if layer.type == "Accuracy"
                 and layer.include and layer.include[0].phase == pb.TEST}
    assert set(train) == set(test) - test_only


def test_googlenet_train_val_auxiliary_losses_and_top5():
    param = config.load_net_param(ZOO / "googlenet_train_val.prototxt")
    train, test = _names(param, "TRAIN"), _names(param, "TEST")
    for net in (train, test):
        assert list(net["loss1/loss"].loss_weight) == [pytest.approx(0.3)]
        assert list(net["loss2/loss"].loss_weight) == [pytest.approx(0.3)]
        assert list(net["loss3/loss3"].loss_weight) == [1.0]
    for k in (1, 2, 3):
        assert test[f"loss{k}/top-5"].accuracy_param.top_k == 5
        assert f"loss{k}/top-5" not in train and f"loss{k}/top-1" not in train
    assert train["data"].transform_param.mirror and not test["data"].transform_param.mirror
    assert list(train["data"].transform_param.mean_value) == [104, 117, 123]


def with_input_layers(param: pb.NetParameter, data_shape, num_labels) -> pb.NetParameter:
    """Data layers replaced by Input layers of the same name and tops (no database needed)."""
    for layer in param.layer:
        if layer.type == "Data":
            layer.type = "Input"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            layer.input_param.shape.add().dim.extend(data_shape)
            layer.input_param.shape.add().dim.extend([num_labels])
    return param


def _train_step(name: str, data_shape, seed: int = 0) -> Net:
    param = with_input_layers(config.load_net_param(ZOO / f"{name}_train_val.prototxt"),
                              data_shape, data_shape[0])
    net = Net(param, "train", seed=seed)
    randomize(net, seed)
    rng = np.random.default_rng(seed)
    net.set_input("data", rng.standard_normal(data_shape).astype(np.float32))
    net.set_input("label", rng.integers(0, 1000, data_shape[0]).astype(np.float32))
    loss = net.forward_backward()
    assert np.isfinite(loss) and loss > 0
    return net


def test_googlenet_train_loss_weights_auxiliary_classifiers():
    net = _train_step("googlenet", (1, 3, 224, 224))
    values = {k: net.blobs[k].data.item() for k in ("loss1/loss1", "loss2/loss1", "loss3/loss3")}
    expected = values["loss3/loss3"] + 0.3 * (values["loss1/loss1"] + values["loss2/loss1"])
    assert net.loss() == pytest.approx(expected, rel=1e-6)
    assert np.abs(net.params["loss1/classifier"][0].diff).sum() > 0


def test_densenet_train_step_with_batch_statistics():
    net = _train_step("densenet121", (2, 3, 32, 32))
    assert np.abs(net.params["conv1"][0].diff).sum() > 0
    # One TRAIN forward from empty statistics: factor 0·λ + 1, the batch mean, and the
    # unbiased batch variance (m / (m − 1) · σ², m = N·H·W), as Caffe accumulates them.
    x = net.blobs["conv1"].data.astype(np.float64)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean_sum, var_sum, factor = (b.data for b in net.layer_dict["conv1/bn"].blobs)
    assert factor.item() == 1.0
    np.testing.assert_allclose(mean_sum, x.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(var_sum, x.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-4)


@pytest.mark.slow
def test_resnet50_train_step():
    net = _train_step("resnet50", (1, 3, 224, 224))
    assert np.abs(net.params["conv1"][0].diff).sum() > 0


def test_squeezenet_train_step():
    net = _train_step("squeezenet1.1", (2, 3, 64, 64))
    assert np.abs(net.params["conv10"][0].diff).sum() > 0

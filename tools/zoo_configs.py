#!/usr/bin/env python
"""Write the model-zoo prototxts under configs/zoo/ (deploy and train_val of each net).

The files reproduce the published Caffe definitions — BVLC AlexNet, CaffeNet (reference
CaffeNet) and GoogLeNet, the VGG-16 deploy of the VGG gist (legacy V1 ``layers`` syntax),
KaimingHe's ResNet-50 deploy (legacy ``input_dim`` header, tab-indented), SqueezeNet v1.1 and
shicai's DenseNet-121 (fork alias ``ceil_mode: false``) — with their layer names, types,
fields and text layout, so that netforge is tested on files as users have them. The nets
without a published train_val (VGG-16, ResNet-50, DenseNet-121) get a faithful one written
here in the BVLC style. The outputs are checked in; run this only to regenerate them:

    python tools/zoo_configs.py            # writes configs/zoo/*.prototxt

This script is a developer tool; the netforge package never imports it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "configs" / "zoo"


class Raw(str):
    """A token written as is (enum names, numbers with a fixed spelling)."""


class Inline(str):
    """A whole line written as is, inside the current block."""


def _value(value) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def emit(pairs, indent: str, depth: int = 0) -> list[str]:
    """protobuf text lines for ``pairs`` ([(key, value)]; a list value is a nested block)."""
    pad = indent * depth
    lines = []
    for key, value in pairs:
        if isinstance(value, Inline):
            lines.append(pad + value)
        elif isinstance(value, list):
            lines.append(f"{pad}{key} {{")
            lines.extend(emit(value, indent, depth + 1))
            lines.append(pad + "}")
        else:
            lines.append(f"{pad}{key}: {_value(value)}")
    return lines


def net_text(header, layers, indent="  ", blank_between=False, keyword="layer") -> str:
    lines = emit(header, indent)
    if blank_between and header:
        lines.append("")
    for layer in layers:
        lines.extend(emit([(keyword, layer)], indent))
        if blank_between:
            lines.append("")
    return "\n".join(lines) + "\n"


# -- shared pieces -----------------------------------------------------------------------


def ntbt(name, type_, bottoms, tops, *rest):
    """A BVLC-style layer: name, type, bottoms, tops, then the rest."""
    pairs = [("name", name), ("type", type_)]
    pairs += [("bottom", b) for b in _list(bottoms)] + [("top", t) for t in _list(tops)]
    return pairs + [p for group in rest for p in group]


def _list(x):
    return [x] if isinstance(x, str) else list(x)


def lr_params():
    """The BVLC idiom: weights at lr×1 with decay, biases at lr×2 without."""
    return [("param", [("lr_mult", 1), ("decay_mult", 1)]),
            ("param", [("lr_mult", 2), ("decay_mult", 0)])]


def filler(kind, **values):
    pairs = [("type", kind)]
    for key, value in values.items():
        pairs.append((key, Raw(value) if isinstance(value, str) else value))
    return pairs


def weight_bias_fillers(weight, bias):
    """``weight_filler`` (a ``filler(...)``) and a constant ``bias_filler`` of ``bias``."""
    return [("weight_filler", weight), ("bias_filler", filler("constant", value=bias))]


def input_layer(n, c, h, w):
    return ntbt("data", "Input", [], "data", [
        ("", Inline(f"input_param {{ shape: {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }}"))])


def data_layers(train_source, test_source, train_batch, test_batch, crop, mean,
                mirror_test=True):
    """TRAIN/TEST Data layers (LMDB) with a transform: mean_file (str) or mean values."""
    layers = []
    for phase, source, batch, mirror in (("TRAIN", train_source, train_batch, True),
                                         ("TEST", test_source, test_batch, False)):
        transform = []
        if mirror or mirror_test:
            transform.append(("mirror", mirror))
        transform.append(("crop_size", crop))
        if isinstance(mean, str):
            transform.append(("mean_file", mean))
        else:
            transform += [("mean_value", Raw(v)) for v in mean]
        layers.append(ntbt("data", "Data", [], ["data", "label"],
                           [("include", [("phase", Raw(phase))])],
                           [("transform_param", transform)],
                           [("data_param", [("source", source), ("batch_size", batch),
                                            ("backend", Raw("LMDB"))])]))
    return layers


def relu(name, blob):
    return ntbt(name, "ReLU", blob, blob)


def dropout(name, blob, ratio):
    return ntbt(name, "Dropout", blob, blob, [("dropout_param", [("dropout_ratio", Raw(ratio))])])


def lrn(name, bottom, top):
    return ntbt(name, "LRN", bottom, top, [("lrn_param", [
        ("local_size", 5), ("alpha", Raw("0.0001")), ("beta", Raw("0.75"))])])


def pool(name, bottom, top, method, kernel=None, stride=None, pad=None, global_pool=False):
    param = [("pool", Raw(method))]
    if kernel is not None:
        param.append(("kernel_size", kernel))
    if stride is not None:
        param.append(("stride", stride))
    if pad is not None:
        param.append(("pad", pad))
    if global_pool:
        param.append(("global_pooling", True))
    return ntbt(name, "Pooling", bottom, top, [("pooling_param", param)])


def accuracy(name, bottom, top, top_k=None, phase_test=True):
    rest = [("include", [("phase", Raw("TEST"))])] if phase_test else []
    param = [("accuracy_param", [("top_k", top_k)])] if top_k else []
    return ntbt(name, "Accuracy", [bottom, "label"], top, rest, param)


def softmax_loss(name, bottom, top, loss_weight=None):
    rest = [("loss_weight", Raw(loss_weight))] if loss_weight is not None else []
    return ntbt(name, "SoftmaxWithLoss", [bottom, "label"], top, rest)


# -- AlexNet and CaffeNet (BVLC) ---------------------------------------------------------

# (name, bottom, num_output, kernel, stride, pad, group, weight std, bias value)
ALEX_CONVS = {
    "conv1": (96, 11, 4, None, None, "0.01", 0),
    "conv2": (256, 5, None, 2, 2, "0.01", "0.1"),
    "conv3": (384, 3, None, 1, None, "0.01", 0),
    "conv4": (384, 3, None, 1, 2, "0.01", "0.1"),
    "conv5": (256, 3, None, 1, 2, "0.01", "0.1"),
}


def alex_conv(name, bottom, spec, train, params=True, bias_override=None):
    num, kernel, stride, pad, group, std, bias = spec
    if bias_override is not None:
        bias = bias_override
    param = [("num_output", num)]
    if pad is not None:
        param.append(("pad", pad))
    param.append(("kernel_size", kernel))
    if group is not None:
        param.append(("group", group))
    if stride is not None:
        param.append(("stride", stride))
    if train:
        param += weight_bias_fillers(filler("gaussian", std=std), bias)
    return ntbt(name, "Convolution", bottom, name, lr_params() if params else [],
                [("convolution_param", param)])


def alex_fc(name, bottom, num, std, bias, train, params=True):
    param = [("num_output", num)]
    if train:
        param += weight_bias_fillers(filler("gaussian", std=std), bias)
    return ntbt(name, "InnerProduct", bottom, name, lr_params() if params else [],
                [("inner_product_param", param)])


def alexnet(train: bool, caffenet: bool) -> str:
    """AlexNet normalises before pooling; CaffeNet pools first (and uses bias 1 fillers)."""
    name = "CaffeNet" if caffenet else "AlexNet"
    layers = (data_layers("examples/imagenet/ilsvrc12_train_lmdb",
                          "examples/imagenet/ilsvrc12_val_lmdb", 256, 50, 227,
                          "data/ilsvrc12/imagenet_mean.binaryproto")
              if train else [input_layer(10, 3, 227, 227)])
    bias_one = 1 if caffenet else "0.1"
    params = train or not caffenet  # BVLC's CaffeNet deploy has no param blocks
    bottom = "data"
    for i in (1, 2):
        conv = f"conv{i}"
        bias = bias_one if (caffenet and i == 2) else None
        layers.append(alex_conv(conv, bottom, ALEX_CONVS[conv], train, params, bias))
        layers.append(relu(f"relu{i}", conv))
        if caffenet:
            layers.append(pool(f"pool{i}", conv, f"pool{i}", "MAX", 3, 2))
            layers.append(lrn(f"norm{i}", f"pool{i}", f"norm{i}"))
            bottom = f"norm{i}"
        else:
            layers.append(lrn(f"norm{i}", conv, f"norm{i}"))
            layers.append(pool(f"pool{i}", f"norm{i}", f"pool{i}", "MAX", 3, 2))
            bottom = f"pool{i}"
    for i in (3, 4, 5):
        conv = f"conv{i}"
        bias = bias_one if (caffenet and i in (4, 5)) else None
        layers.append(alex_conv(conv, bottom, ALEX_CONVS[conv], train, params, bias))
        layers.append(relu(f"relu{i}", conv))
        bottom = conv
    layers.append(pool("pool5", "conv5", "pool5", "MAX", 3, 2))
    bottom = "pool5"
    for i in (6, 7):
        layers.append(alex_fc(f"fc{i}", bottom, 4096, "0.005", bias_one, train, params))
        layers.append(relu(f"relu{i}", f"fc{i}"))
        layers.append(dropout(f"drop{i}", f"fc{i}", "0.5"))
        bottom = f"fc{i}"
    layers.append(alex_fc("fc8", "fc7", 1000, "0.01", 0, train, params))
    if train:
        layers.append(accuracy("accuracy", "fc8", "accuracy"))
        layers.append(softmax_loss("loss", "fc8", "loss"))
    else:
        layers.append(ntbt("prob", "Softmax", "fc8", "prob"))
    return net_text([("name", name)], layers)


# -- GoogLeNet (BVLC) --------------------------------------------------------------------

# Inception modules: 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def g_conv(name, bottom, num, kernel, pad=None, stride=None, bias="0.2"):
    param = [("num_output", num)]
    if pad is not None:
        param.append(("pad", pad))
    param.append(("kernel_size", kernel))
    if stride is not None:
        param.append(("stride", stride))
    param += weight_bias_fillers(filler("xavier"), bias)
    return ntbt(name, "Convolution", bottom, name, lr_params(), [("convolution_param", param)])


def g_fc(name, bottom, num, bias):
    param = [("num_output", num), *weight_bias_fillers(filler("xavier"), bias)]
    return ntbt(name, "InnerProduct", bottom, name, lr_params(),
                [("inner_product_param", param)])


def inception(key, bottom):
    n1, n3r, n3, n5r, n5, npool = INCEPTION[key]
    p = f"inception_{key}/"
    return [
        g_conv(p + "1x1", bottom, n1, 1), relu(p + "relu_1x1", p + "1x1"),
        g_conv(p + "3x3_reduce", bottom, n3r, 1), relu(p + "relu_3x3_reduce", p + "3x3_reduce"),
        g_conv(p + "3x3", p + "3x3_reduce", n3, 3, pad=1), relu(p + "relu_3x3", p + "3x3"),
        g_conv(p + "5x5_reduce", bottom, n5r, 1), relu(p + "relu_5x5_reduce", p + "5x5_reduce"),
        g_conv(p + "5x5", p + "5x5_reduce", n5, 5, pad=2), relu(p + "relu_5x5", p + "5x5"),
        pool(p + "pool", bottom, p + "pool", "MAX", 3, 1, pad=1),
        g_conv(p + "pool_proj", p + "pool", npool, 1),
        relu(p + "relu_pool_proj", p + "pool_proj"),
        ntbt(p + "output", "Concat", [p + "1x1", p + "3x3", p + "5x5", p + "pool_proj"],
             p + "output"),
    ]


def auxiliary_head(k, bottom):
    """The auxiliary classifiers on inception 4a/4d, weighted 0.3 in the total loss."""
    p = f"loss{k}/"
    return [
        pool(p + "ave_pool", bottom, p + "ave_pool", "AVE", 5, 3),
        g_conv(p + "conv", p + "ave_pool", 128, 1), relu(p + "relu_conv", p + "conv"),
        g_fc(p + "fc", p + "conv", 1024, "0.2"), relu(p + "relu_fc", p + "fc"),
        dropout(p + "drop_fc", p + "fc", "0.7"),
        g_fc(p + "classifier", p + "fc", 1000, 0),
        softmax_loss(p + "loss", p + "classifier", p + "loss1", loss_weight="0.3"),
        accuracy(p + "top-1", p + "classifier", p + "top-1"),
        accuracy(p + "top-5", p + "classifier", p + "top-5", top_k=5),
    ]


def googlenet(train: bool) -> str:
    layers = (data_layers("examples/imagenet/ilsvrc12_train_lmdb",
                          "examples/imagenet/ilsvrc12_val_lmdb", 32, 50, 224,
                          ["104", "117", "123"])
              if train else [input_layer(10, 3, 224, 224)])
    layers += [
        g_conv("conv1/7x7_s2", "data", 64, 7, pad=3, stride=2),
        relu("conv1/relu_7x7", "conv1/7x7_s2"),
        pool("pool1/3x3_s2", "conv1/7x7_s2", "pool1/3x3_s2", "MAX", 3, 2),
        lrn("pool1/norm1", "pool1/3x3_s2", "pool1/norm1"),
        g_conv("conv2/3x3_reduce", "pool1/norm1", 64, 1),
        relu("conv2/relu_3x3_reduce", "conv2/3x3_reduce"),
        g_conv("conv2/3x3", "conv2/3x3_reduce", 192, 3, pad=1),
        relu("conv2/relu_3x3", "conv2/3x3"),
        lrn("conv2/norm2", "conv2/3x3", "conv2/norm2"),
        pool("pool2/3x3_s2", "conv2/norm2", "pool2/3x3_s2", "MAX", 3, 2),
    ]
    bottom = "pool2/3x3_s2"
    for key in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
        layers += inception(key, bottom)
        bottom = f"inception_{key}/output"
        if train and key == "4a":
            layers += auxiliary_head(1, bottom)
        if train and key == "4d":
            layers += auxiliary_head(2, bottom)
        if key == "3b":
            layers.append(pool("pool3/3x3_s2", bottom, "pool3/3x3_s2", "MAX", 3, 2))
            bottom = "pool3/3x3_s2"
        if key == "4e":
            layers.append(pool("pool4/3x3_s2", bottom, "pool4/3x3_s2", "MAX", 3, 2))
            bottom = "pool4/3x3_s2"
    layers += [
        pool("pool5/7x7_s1", bottom, "pool5/7x7_s1", "AVE", 7, 1),
        dropout("pool5/drop_7x7_s1", "pool5/7x7_s1", "0.4"),
        g_fc("loss3/classifier", "pool5/7x7_s1", 1000, 0),
    ]
    if train:
        layers += [
            softmax_loss("loss3/loss3", "loss3/classifier", "loss3/loss3", loss_weight="1"),
            accuracy("loss3/top-1", "loss3/classifier", "loss3/top-1"),
            accuracy("loss3/top-5", "loss3/classifier", "loss3/top-5", top_k=5),
        ]
    else:
        layers.append(ntbt("prob", "Softmax", "loss3/classifier", "prob"))
    return net_text([("name", "GoogleNet")], layers)


# -- VGG-16 ------------------------------------------------------------------------------

VGG_BLOCKS = ((1, 64, 2), (2, 128, 2), (3, 256, 3), (4, 512, 3), (5, 512, 3))


def vgg16_deploy() -> str:
    """The VGG gist's deploy file: V1 ``layers`` with enum types, ``input_dim`` header."""

    def v1(bottom, top, name, type_, *rest):
        return [("bottom", bottom), ("top", top), ("name", name), ("type", Raw(type_))] + [
            p for group in rest for p in group]

    layers = []
    bottom = "data"
    for block, width, depth in VGG_BLOCKS:
        for i in range(1, depth + 1):
            conv = f"conv{block}_{i}"
            layers.append(v1(bottom, conv, conv, "CONVOLUTION", [("convolution_param", [
                ("num_output", width), ("pad", 1), ("kernel_size", 3)])]))
            layers.append(v1(conv, conv, f"relu{block}_{i}", "RELU"))
            bottom = conv
        layers.append(v1(bottom, f"pool{block}", f"pool{block}", "POOLING", [("pooling_param", [
            ("pool", Raw("MAX")), ("kernel_size", 2), ("stride", 2)])]))
        bottom = f"pool{block}"
    for i in (6, 7):
        layers.append(v1(bottom, f"fc{i}", f"fc{i}", "INNER_PRODUCT",
                         [("inner_product_param", [("num_output", 4096)])]))
        layers.append(v1(f"fc{i}", f"fc{i}", f"relu{i}", "RELU"))
        layers.append(v1(f"fc{i}", f"fc{i}", f"drop{i}", "DROPOUT",
                         [("dropout_param", [("dropout_ratio", Raw("0.5"))])]))
        bottom = f"fc{i}"
    layers.append(v1("fc7", "fc8", "fc8", "INNER_PRODUCT",
                     [("inner_product_param", [("num_output", 1000)])]))
    layers.append(v1("fc8", "prob", "prob", "SOFTMAX"))
    header = [("name", "VGG_ILSVRC_16_layers"), ("input", "data")] + [
        ("input_dim", d) for d in (10, 3, 224, 224)]
    return net_text(header, layers, keyword="layers")


def vgg16_train_val() -> str:
    """VGG-16 for training, in the modern syntax and the BVLC train_val style."""
    layers = data_layers("examples/imagenet/ilsvrc12_train_lmdb",
                         "examples/imagenet/ilsvrc12_val_lmdb", 64, 50, 224,
                         ["103.939", "116.779", "123.68"])
    bottom = "data"
    for block, width, depth in VGG_BLOCKS:
        for i in range(1, depth + 1):
            conv = f"conv{block}_{i}"
            layers.append(ntbt(conv, "Convolution", bottom, conv, lr_params(), [
                ("convolution_param", [
                    ("num_output", width), ("pad", 1), ("kernel_size", 3),
                    ("weight_filler", filler("gaussian", std="0.01")),
                    ("bias_filler", filler("constant", value=0))])]))
            layers.append(relu(f"relu{block}_{i}", conv))
            bottom = conv
        layers.append(pool(f"pool{block}", bottom, f"pool{block}", "MAX", 2, 2))
        bottom = f"pool{block}"
    for i in (6, 7):
        layers.append(alex_fc(f"fc{i}", bottom, 4096, "0.005", "0.1", True))
        layers.append(relu(f"relu{i}", f"fc{i}"))
        layers.append(dropout(f"drop{i}", f"fc{i}", "0.5"))
        bottom = f"fc{i}"
    layers.append(alex_fc("fc8", "fc7", 1000, "0.01", 0, True))
    layers += [
        accuracy("accuracy", "fc8", "accuracy"),
        accuracy("accuracy_top5", "fc8", "accuracy_top5", top_k=5),
        softmax_loss("loss", "fc8", "loss"),
    ]
    return net_text([("name", "VGG_ILSVRC_16_layers")], layers)


# -- ResNet-50 (KaimingHe) ---------------------------------------------------------------

RESNET_STAGES = ((2, "abc", 64), (3, "abcd", 128), (4, "abcdef", 256), (5, "abc", 512))


def btnt(bottoms, top, name, type_, *rest):
    """KaimingHe's order: bottoms, top, name, type."""
    pairs = [("bottom", b) for b in _list(bottoms)] + [("top", top), ("name", name),
                                                       ("type", type_)]
    return pairs + [p for group in rest for p in group]


def resnet50(train: bool) -> str:
    def conv(bottom, name, num, kernel, pad, stride, bias_term=False):
        param = [("num_output", num), ("kernel_size", kernel), ("pad", pad),
                 ("stride", stride)]
        if not bias_term:
            param.append(("bias_term", False))
        if train:
            param.append(("weight_filler", filler("msra")))
            if bias_term:
                param.append(("bias_filler", filler("constant", value=0)))
        return btnt(bottom, name, name, "Convolution", [("convolution_param", param)])

    def bn_scale(blob, suffix):
        bn_param = [] if train else [("batch_norm_param", [("use_global_stats", True)])]
        return [btnt(blob, blob, f"bn{suffix}", "BatchNorm", bn_param),
                btnt(blob, blob, f"scale{suffix}", "Scale",
                     [("scale_param", [("bias_term", True)])])]

    def relu_k(blob, name):
        return btnt(blob, blob, name, "ReLU")

    layers = []
    if train:
        for layer in data_layers("examples/imagenet/ilsvrc12_train_lmdb",
                                 "examples/imagenet/ilsvrc12_val_lmdb", 32, 10, 224,
                                 ["104", "117", "123"]):
            layers.append(layer)
    layers.append(conv("data", "conv1", 64, 7, 3, 2, bias_term=True))
    layers += [btnt("conv1", "conv1", "bn_conv1", "BatchNorm",
                    [] if train else [("batch_norm_param", [("use_global_stats", True)])]),
               btnt("conv1", "conv1", "scale_conv1", "Scale",
                    [("scale_param", [("bias_term", True)])]),
               relu_k("conv1", "conv1_relu"),
               btnt("conv1", "pool1", "pool1", "Pooling", [("pooling_param", [
                   ("kernel_size", 3), ("stride", 2), ("pool", Raw("MAX"))])])]
    bottom = "pool1"
    for stage, blocks, width in RESNET_STAGES:
        for j, block in enumerate(blocks):
            res = f"res{stage}{block}"
            stride = 2 if (j == 0 and stage > 2) else 1
            if j == 0:
                layers.append(conv(bottom, f"{res}_branch1", 4 * width, 1, 0, stride))
                layers += bn_scale(f"{res}_branch1", f"{stage}{block}_branch1")
                shortcut = f"{res}_branch1"
            else:
                shortcut = bottom
            branch_in = bottom
            for part, (num, kernel, pad, s) in zip(
                    "abc", ((width, 1, 0, stride), (width, 3, 1, 1), (4 * width, 1, 0, 1)),
                    strict=True):
                blob = f"{res}_branch2{part}"
                layers.append(conv(branch_in, blob, num, kernel, pad, s))
                layers += bn_scale(blob, f"{stage}{block}_branch2{part}")
                if part != "c":
                    layers.append(relu_k(blob, f"{blob}_relu"))
                branch_in = blob
            layers.append(btnt([shortcut, f"{res}_branch2c"], res, res, "Eltwise"))
            layers.append(relu_k(res, f"{res}_relu"))
            bottom = res
    layers.append(btnt("res5c", "pool5", "pool5", "Pooling", [("pooling_param", [
        ("kernel_size", 7), ("stride", 1), ("pool", Raw("AVE"))])]))
    fc_param = [("num_output", 1000)]
    if train:
        fc_param += weight_bias_fillers(filler("msra"), 0)
    layers.append(btnt("pool5", "fc1000", "fc1000", "InnerProduct",
                       lr_params() if train else [], [("inner_product_param", fc_param)]))
    if train:
        layers += [
            btnt(["fc1000", "label"], "loss", "loss", "SoftmaxWithLoss"),
            btnt(["fc1000", "label"], "accuracy", "accuracy", "Accuracy",
                 [("include", [("phase", Raw("TEST"))])]),
            btnt(["fc1000", "label"], "accuracy_top5", "accuracy_top5", "Accuracy",
                 [("include", [("phase", Raw("TEST"))])],
                 [("accuracy_param", [("top_k", 5)])]),
        ]
        header = [("name", "ResNet-50")]
    else:
        layers.append(btnt("fc1000", "prob", "prob", "Softmax"))
        header = [("name", "ResNet-50"), ("input", "data")] + [
            ("input_dim", d) for d in (1, 3, 224, 224)]
    return net_text(header, layers, indent="\t", blank_between=True)


# -- SqueezeNet v1.1 ---------------------------------------------------------------------

FIRES = ((2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128), (6, 48, 192), (7, 48, 192),
         (8, 64, 256), (9, 64, 256))


def squeezenet(train: bool) -> str:
    def conv(name, bottom, num, kernel, pad=None, stride=None, weight=None):
        param = [("num_output", num)]
        if pad is not None:
            param.append(("pad", pad))
        param.append(("kernel_size", kernel))
        if stride is not None:
            param.append(("stride", stride))
        if train:
            param.append(("weight_filler", weight or filler("xavier")))
        return ntbt(name, "Convolution", bottom, name, [("convolution_param", param)])

    if train:
        layers = []
        for phase, source, batch in (("TRAIN", "examples/imagenet/ilsvrc12_train_lmdb", 32),
                                     ("TEST", "examples/imagenet/ilsvrc12_val_lmdb", 25)):
            layers.append(ntbt("data", "Data", [], ["data", "label"],
                               [("include", [("phase", Raw(phase))])],
                               [("transform_param", [("crop_size", 227)] + [
                                   ("mean_value", Raw(v)) for v in ("104", "117", "123")])],
                               [("data_param", [("source", source), ("batch_size", batch),
                                                ("backend", Raw("LMDB"))])]))
    else:
        layers = [input_layer(10, 3, 227, 227)]
    layers += [conv("conv1", "data", 64, 3, stride=2), relu("relu_conv1", "conv1"),
               pool("pool1", "conv1", "pool1", "MAX", 3, 2)]
    bottom = "pool1"
    for k, squeeze, expand in FIRES:
        f = f"fire{k}/"
        layers += [
            conv(f + "squeeze1x1", bottom, squeeze, 1),
            relu(f + "relu_squeeze1x1", f + "squeeze1x1"),
            conv(f + "expand1x1", f + "squeeze1x1", expand, 1),
            relu(f + "relu_expand1x1", f + "expand1x1"),
            conv(f + "expand3x3", f + "squeeze1x1", expand, 3, pad=1),
            relu(f + "relu_expand3x3", f + "expand3x3"),
            ntbt(f + "concat", "Concat", [f + "expand1x1", f + "expand3x3"], f + "concat"),
        ]
        bottom = f + "concat"
        if k in (3, 5):
            layers.append(pool(f"pool{k}", bottom, f"pool{k}", "MAX", 3, 2))
            bottom = f"pool{k}"
    layers += [
        dropout("drop9", "fire9/concat", "0.5"),
        conv("conv10", "fire9/concat", 1000, 1,
             weight=filler("gaussian", mean="0.0", std="0.01")),
        relu("relu_conv10", "conv10"),
        pool("pool10", "conv10", "pool10", "AVE", global_pool=True),
    ]
    if train:
        layers += [
            softmax_loss("loss", "pool10", "loss"),
            accuracy("accuracy", "pool10", "accuracy", phase_test=False),
            accuracy("accuracy_top5", "pool10", "accuracy_top5", top_k=5, phase_test=False),
        ]
    else:
        layers.append(ntbt("prob", "Softmax", "pool10", "prob"))
    return net_text([], layers)


# -- DenseNet-121 (shicai) ---------------------------------------------------------------

DENSE_BLOCKS = ((2, 6), (3, 12), (4, 24), (5, 16))
GROWTH = 32


def densenet121(train: bool) -> str:
    def bn_scale_relu(bottom, prefix, relu_name):
        """BatchNorm → Scale → ReLU, the last two in place on the BatchNorm output."""
        top = f"{prefix}/bn"
        return [
            ntbt(f"{prefix}/bn", "BatchNorm", bottom, top,
                 [("batch_norm_param", [("eps", Raw("1e-5"))])]),
            ntbt(f"{prefix}/scale", "Scale", top, top, [("scale_param", [("bias_term", True)])]),
            ntbt(relu_name, "ReLU", top, top),
        ]

    def conv(name, bottom, num, kernel, pad=None, stride=None):
        param = [("num_output", num), ("bias_term", False)]
        if pad is not None:
            param.append(("pad", pad))
        param.append(("kernel_size", kernel))
        if stride is not None:
            param.append(("stride", stride))
        if train:
            param.append(("weight_filler", filler("msra")))
        return ntbt(name, "Convolution", bottom, name, [("convolution_param", param)])

    layers = []
    if train:
        layers += data_layers("examples/imagenet/ilsvrc12_train_lmdb",
                              "examples/imagenet/ilsvrc12_val_lmdb", 32, 10, 224,
                              ["104", "117", "123"])
    layers.append(conv("conv1", "data", 64, 7, pad=3, stride=2))
    layers += bn_scale_relu("conv1", "conv1", "relu1")
    layers.append(ntbt("pool1", "Pooling", "conv1/bn", "pool1", [("pooling_param", [
        ("pool", Raw("MAX")), ("kernel_size", 3), ("stride", 2), ("pad", 1),
        ("ceil_mode", False)])]))
    bottom, channels = "pool1", 64
    for stage, depth in DENSE_BLOCKS:
        for i in range(1, depth + 1):
            unit = f"conv{stage}_{i}"
            layers += bn_scale_relu(bottom, f"{unit}/x1", f"relu{stage}_{i}/x1")
            layers.append(conv(f"{unit}/x1", f"{unit}/x1/bn", 4 * GROWTH, 1))
            layers += bn_scale_relu(f"{unit}/x1", f"{unit}/x2", f"relu{stage}_{i}/x2")
            layers.append(conv(f"{unit}/x2", f"{unit}/x2/bn", GROWTH, 3, pad=1))
            concat = f"concat_{stage}_{i}"
            layers.append(ntbt(concat, "Concat", [bottom, f"{unit}/x2"], concat))
            bottom, channels = concat, channels + GROWTH
        block = f"conv{stage}_blk"
        layers += bn_scale_relu(bottom, block, f"relu{stage}_blk")
        if stage == 5:
            break
        channels //= 2
        layers.append(conv(block, f"{block}/bn", channels, 1))
        layers.append(pool(f"pool{stage}", block, f"pool{stage}", "AVE", 2, 2))
        bottom = f"pool{stage}"
    layers.append(pool("pool5", "conv5_blk/bn", "pool5", "AVE", global_pool=True))
    fc_param = [("num_output", 1000), ("kernel_size", 1)]
    if train:
        fc_param += weight_bias_fillers(filler("msra"), 0)
    layers.append(ntbt("fc6", "Convolution", "pool5", "fc6", [("convolution_param", fc_param)]))
    if train:
        layers += [
            softmax_loss("loss", "fc6", "loss"),
            accuracy("accuracy", "fc6", "accuracy"),
            accuracy("accuracy_top5", "fc6", "accuracy_top5", top_k=5),
        ]
        header = [("name", "DENSENET_121")]
    else:
        header = [("name", "DENSENET_121"), ("input", "data")] + [
            ("input_dim", d) for d in (1, 3, 224, 224)]
    return net_text(header, layers)


FILES = {
    "alexnet_deploy.prototxt": lambda: alexnet(False, False),
    "alexnet_train_val.prototxt": lambda: alexnet(True, False),
    "caffenet_deploy.prototxt": lambda: alexnet(False, True),
    "caffenet_train_val.prototxt": lambda: alexnet(True, True),
    "googlenet_deploy.prototxt": lambda: googlenet(False),
    "googlenet_train_val.prototxt": lambda: googlenet(True),
    "vgg16_deploy.prototxt": vgg16_deploy,
    "vgg16_train_val.prototxt": vgg16_train_val,
    "resnet50_deploy.prototxt": lambda: resnet50(False),
    "resnet50_train_val.prototxt": lambda: resnet50(True),
    "squeezenet1.1_deploy.prototxt": lambda: squeezenet(False),
    "squeezenet1.1_train_val.prototxt": lambda: squeezenet(True),
    "densenet121_deploy.prototxt": lambda: densenet121(False),
    "densenet121_train_val.prototxt": lambda: densenet121(True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, build in FILES.items():
        (args.output_dir / name).write_text(build())
        print(f"wrote {args.output_dir / name}")


if __name__ == "__main__":
    main()

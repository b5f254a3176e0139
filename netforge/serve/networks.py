"""Nets and solvers for jobs: the bundled networks, uploaded ones (no Python layers, no
file-reading layers), the train net pointed at a dataset, its solver, and the deploy net
that classification derives from it.
"""

from __future__ import annotations

import math
from pathlib import Path

from google.protobuf import text_format

from netforge import netforge_pb2 as pb
from netforge.config.text import parse_text
from netforge.config.upgrade import upgrade_net
from netforge.errors import ConfigError
from netforge.serve.forms import Fields, FormError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MAX_PROTOTXT_CHARS = 1 << 20
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
# Layers that read or write files named in the prototxt: an uploaded net could reach outside
# the workspace through them, so only the Data layer (whose source the server sets) is kept.
FILE_LAYERS = ("ImageData", "HDF5Data", "HDF5Output", "WindowData")


def bundled_networks() -> dict[str, Path]:
    """Name -> train/val prototxt of the networks shipped in configs/ (a source checkout)."""
    found = {}
    for name, rel in (("lenet", "lenet_train_test.prototxt"),
                      ("cifar10_quick", "cifar10_quick_train_test.prototxt")):
        if (CONFIGS / rel).exists():
            found[name] = CONFIGS / rel
    for path in sorted((CONFIGS / "zoo").glob("*_train_val.prototxt")):
        found[path.name.removesuffix("_train_val.prototxt")] = path
    return found


def parse_network(text: str, where: str) -> pb.NetParameter:
    """Parse and upgrade a net; refuse Python layers and layers that name their own files."""
    if len(text) > MAX_PROTOTXT_CHARS:
        raise FormError(f"{where} is larger than {MAX_PROTOTXT_CHARS} characters")
    param = upgrade_net(parse_text(text, pb.NetParameter(), where), where)
    for layer in param.layer:
        if layer.type == "Python":
            raise ConfigError(f'{where}: layer "{layer.name}" is a Python layer; the server '
                              "does not run code from uploaded nets")
        if layer.type in FILE_LAYERS:
            raise ConfigError(f'{where}: layer "{layer.name}" ({layer.type}) reads files the '
                              "prototxt names; use a Data layer (the server points it at "
                              "the dataset)")
    if not any(layer.type == "Data" for layer in param.layer):
        raise ConfigError(f"{where}: the net has no Data layer to feed the dataset into")
    return param


def _phase(layer) -> int | None:
    for rule in layer.include:
        if rule.HasField("phase"):
            return rule.phase
    return None


def prepare_train_net(param: pb.NetParameter, db: dict[str, Path], mean_file: Path | None,
                      classes: int, batch_size: int | None) -> pb.NetParameter:
    """Point the Data layers at the dataset (TRAIN: ``db["train"]``, TEST: ``db["val"]``),
    replace mean files by the dataset's, size the classifier to ``classes``."""
    net = pb.NetParameter()
    net.CopyFrom(param)
    for layer in net.layer:
        if layer.type != "Data":
            continue
        phase = _phase(layer)
        layer.data_param.source = str(db["val"] if phase == pb.TEST else db["train"])
        layer.data_param.backend = pb.DataParameter.LMDB
        if batch_size and phase != pb.TEST:
            layer.data_param.batch_size = batch_size
        if layer.transform_param.HasField("mean_file"):
            if mean_file is None:
                layer.transform_param.ClearField("mean_file")
            else:
                layer.transform_param.mean_file = str(mean_file)
    producers = {top: layer for layer in net.layer for top in layer.top}
    for layer in net.layer:
        if layer.type == "SoftmaxWithLoss" and layer.bottom:
            scorer = producers.get(layer.bottom[0])
            if scorer is not None and scorer.type == "InnerProduct":
                scorer.inner_product_param.num_output = classes
    return net


def fit_test_batch(param: pb.NetParameter, samples: int) -> None:
    """Shrink TEST batches larger than the val split: a batch that wraps around would count
    some samples twice in the test scores."""
    for layer in param.layer:
        if layer.type == "Data" and _phase(layer) == pb.TEST and samples > 0:
            layer.data_param.batch_size = min(layer.data_param.batch_size or samples, samples)


def test_batch_size(param: pb.NetParameter) -> int:
    for layer in param.layer:
        if layer.type == "Data" and _phase(layer) == pb.TEST:
            return max(int(layer.data_param.batch_size), 1)
    for layer in param.layer:
        if layer.type == "Data":
            return max(int(layer.data_param.batch_size), 1)
    return 1


def solver_options(fields: Fields) -> dict:
    """Solver settings from a form, each checked."""
    return {
        "type": fields.choice("solver_type", SOLVER_TYPES, "SGD"),
        "base_lr": fields.number("base_lr", 0.01, low=1e-9, high=10.0),
        "lr_policy": fields.choice("lr_policy", LR_POLICIES, "inv"),
        "gamma": fields.number("gamma", 0.0001, low=0.0, high=10.0),
        "power": fields.number("power", 0.75, low=0.0, high=10.0),
        "stepsize": fields.integer("stepsize", 1000, low=1, high=10**8),
        "momentum": fields.number("momentum", 0.9, low=0.0, high=1.0, high_open=True),
        "weight_decay": fields.number("weight_decay", 0.0005, low=0.0, high=1.0),
        "max_iter": fields.integer("max_iter", 1000, low=1, high=10**8),
        "snapshot": fields.integer("snapshot", 0, low=0, high=10**8),
        "test_interval": fields.integer("test_interval", 0, low=0, high=10**8),
        "display": fields.integer("display", 0, low=0, high=10**8),
        "batch_size": fields.integer("batch_size", 0, low=0, high=4096),
        "device": fields.choice("device", ("cpu", "gpu"), "cpu"),
        "gpu_id": fields.integer("gpu_id", 0, low=0, high=64),
        "seed": fields.integer("seed", 1, low=0, high=2**31 - 1),
    }


def solver_text(options: dict, net_file: Path, prefix: Path, test_iter: int | None) -> str:
    """The solver prototxt of a job (``display``/``test_interval`` 0 pick sensible values)."""
    max_iter = options["max_iter"]
    sp = pb.SolverParameter(
        net=str(net_file), type=options["type"], base_lr=options["base_lr"],
        lr_policy=options["lr_policy"], gamma=options["gamma"], power=options["power"],
        stepsize=options["stepsize"], weight_decay=options["weight_decay"], max_iter=max_iter,
        display=options["display"] or max(1, max_iter // 50),
        snapshot=options["snapshot"], snapshot_prefix=str(prefix),
        random_seed=options["seed"],
        solver_mode=pb.SolverParameter.GPU if options["device"] == "gpu"
        else pb.SolverParameter.CPU, device_id=options["gpu_id"])
    if options["type"] in ("SGD", "Nesterov", "RMSProp", "AdaDelta", "Adam"):
        sp.momentum = options["momentum"]
    if test_iter:
        sp.test_iter.append(test_iter)
        sp.test_interval = options["test_interval"] or max(1, max_iter // 5)
    return text_format.MessageToString(sp)


def test_iterations(samples: int, batch: int) -> int:
    return max(1, math.ceil(samples / max(batch, 1)))


def deploy_net(train_net: pb.NetParameter, shape: tuple[int, int, int]) -> pb.NetParameter:
    """The TEST net with an Input of (1, C, crop or H, crop or W) for its Data layer, the
    layers that use the labels left out, and SoftmaxWithLoss turned into Softmax "prob"."""
    deploy = pb.NetParameter(name=train_net.name)
    label_blobs: set[str] = set()
    for layer in train_net.layer:
        phase = _phase(layer)
        if phase == pb.TRAIN:
            continue
        if layer.type == "Data":
            crop = layer.transform_param.crop_size
            channels, height, width = shape
            item = deploy.layer.add(name=layer.name, type="Input", top=[layer.top[0]])
            item.input_param.shape.add(dim=[1, channels, crop or height, crop or width])
            label_blobs.update(layer.top[1:])
            continue
        if layer.type == "SoftmaxWithLoss":
            deploy.layer.add(name="prob", type="Softmax", bottom=[layer.bottom[0]], top=["prob"])
            continue
        if any(b in label_blobs for b in layer.bottom):
            label_blobs.update(layer.top)
            continue
        added = deploy.layer.add()
        added.CopyFrom(layer)
        added.ClearField("include")
    return deploy


def transform_of(train_net: pb.NetParameter) -> pb.TransformationParameter:
    """The TEST Data layer's transform_param (scale, mean) for classification."""
    for layer in train_net.layer:
        if layer.type == "Data" and _phase(layer) != pb.TRAIN:
            return layer.transform_param
    return pb.TransformationParameter()

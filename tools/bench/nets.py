"""The bench's nets, built for netforge and translated layer by layer into PyTorch.

Named nets (``NETS``): Caffe's LeNet and CIFAR-10 quick (configs/), AlexNet, ResNet-50
and DenseNet-121 (configs/zoo/). For a TRAIN step the net is the train_val prototxt with its
data layers replaced by Input layers of the same shapes (random images, random labels); for
predict it is the deploy prototxt in the TEST phase. tools/bench/torch_translate.py turns
the netforge plan into a torch module running the same layers with copies of the same
weights, in train or eval mode, so that both frameworks time the same arithmetic; the
helpers at the end feed and step that module.

PyTorch is a benchmark oracle only; netforge never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DATA_TYPES = ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData")


@dataclass(frozen=True)
class BenchNet:
    train: str  # train_val prototxt, relative to the repository root
    deploy: str
    image: tuple[int, int, int]  # (C, H, W) of one input image
    classes: int
    batch: int  # default batch size


NETS = {
    "lenet": BenchNet("configs/lenet_train_test.prototxt", "configs/lenet.prototxt",
                      (1, 28, 28), 10, 64),
    "cifar10_quick": BenchNet("configs/cifar10_quick_train_test.prototxt",
                              "configs/cifar10_quick.prototxt", (3, 32, 32), 10, 100),
    "alexnet": BenchNet("configs/zoo/alexnet_train_val.prototxt",
                        "configs/zoo/alexnet_deploy.prototxt", (3, 227, 227), 1000, 4),
    "resnet50": BenchNet("configs/zoo/resnet50_train_val.prototxt",
                         "configs/zoo/resnet50_deploy.prototxt", (3, 224, 224), 1000, 2),
    "densenet121": BenchNet("configs/zoo/densenet121_train_val.prototxt",
                            "configs/zoo/densenet121_deploy.prototxt", (3, 224, 224), 1000, 2),
}

# Caffe's SGD settings of the LeNet solver; the same for every bench net (their values do not
# change the time of a step).
SOLVER = {"base_lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def train_param(name: str, batch: int):
    """The train_val NetParameter of ``name`` with Input layers in place of data layers."""
    from netforge import config
    from netforge import netforge_pb2 as pb

    spec = NETS[name]
    source = config.load_net_param(ROOT / spec.train)
    out = pb.NetParameter(name=source.name)
    for layer in source.layer:
        if layer.type not in DATA_TYPES:
            out.layer.add().CopyFrom(layer)
            continue
        new = out.layer.add(name=layer.name, type="Input")
        new.top.extend(layer.top)
        new.include.extend(layer.include)
        new.exclude.extend(layer.exclude)
        new.input_param.shape.add().dim.extend([batch, *spec.image])
        if len(layer.top) > 1:
            new.input_param.shape.add().dim.extend([batch])
    return out


def deploy_param(name: str, batch: int):
    from netforge import config
    from netforge.inspect.summary import set_batch_size

    param = config.load_net_param(ROOT / NETS[name].deploy)
    set_batch_size(param, batch)
    return param


def make_solver(name: str, batch: int, seed: int = 1, **solver_options):
    """A netforge SGD solver (momentum, L2 decay) on the TRAIN net of ``name``;
    ``solver_options`` go to ``netforge.train.solver.Solver``."""
    from netforge import netforge_pb2 as pb
    from netforge.train.solver import Solver

    sp = pb.SolverParameter(lr_policy="fixed", max_iter=10**9, random_seed=seed, **SOLVER)
    sp.train_net_param.CopyFrom(train_param(name, batch))
    solver = Solver(sp, metrics=False, **solver_options)
    fill_inputs(solver.net, name, seed)
    _calibrate_batch_norm(solver.net)
    return solver


def make_predict_net(name: str, batch: int, seed: int = 1, **net_options):
    """The deploy net of ``name`` in the TEST phase, with random weights and a random batch.

    ``net_options`` go to ``netforge.Net`` (e.g. a memory-planning switch) when given."""
    from netforge.net import Net

    net = Net(deploy_param(name, batch), "test", seed=seed, **net_options)
    fill_inputs(net, name, seed)
    _calibrate_batch_norm(net)
    return net


def build_netforge(name_or_path: str, phase: str = "train", batch: int | None = None):
    """A netforge Net for the profiler: a named bench net, or any prototxt path (its data
    layers become Input layers only for the named nets)."""
    from netforge.net import Net

    if name_or_path not in NETS:
        return Net(name_or_path, phase)
    batch = batch or NETS[name_or_path].batch
    if phase == "test":
        return make_predict_net(name_or_path, batch)
    return make_solver(name_or_path, batch).net


def fill_inputs(net, name: str, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    for blob_name in net.inputs:
        blob = net.blobs[blob_name]
        if blob_name == "label":
            blob.data[...] = rng.integers(0, NETS[name].classes, blob.shape)
        else:
            blob.data[...] = rng.standard_normal(blob.shape, dtype=np.float32)


def _calibrate_batch_norm(net) -> None:
    """Stored BatchNorm statistics near those of the random input (a TEST-phase ResNet with
    zero statistics saturates; the time does not depend on it, the equivalence check does)."""
    import numpy as np

    if not any(step.layer.type == "BatchNorm" for step in net.plan.steps):
        return
    for step in net.plan.steps:
        if step.layer.type == "BatchNorm" and step.layer.use_global_stats:
            x = step.bottoms[0].data
            axes = (0, *range(2, x.ndim))
            step.layer.blobs[0].data[...] = x.mean(axis=axes)
            step.layer.blobs[1].data[...] = np.maximum(x.var(axis=axes), 1e-2)
            step.layer.blobs[2].data[...] = 1.0
        step.layer.forward(step.bottoms, step.tops)


# -- torch helpers for tools/bench/cpu.py (the translation is tools/bench/torch_translate.py) --


def torch_inputs(net) -> dict:
    """The netforge net's input blobs as torch tensors (copies)."""
    import torch

    return {name: torch.from_numpy(net.blobs[name].data.copy()) for name in net.inputs}


def torch_optimizer(module):
    import torch

    return torch.optim.SGD([p for p in module.parameters() if p.requires_grad],
                           lr=SOLVER["base_lr"], momentum=SOLVER["momentum"],
                           weight_decay=SOLVER["weight_decay"])


def torch_train_step(module, optimizer, inputs: dict, loss_name: str = "loss"):
    optimizer.zero_grad(set_to_none=False)
    loss = module(inputs)[loss_name]
    loss.backward()
    optimizer.step()
    return loss


def torch_predict(module, inputs: dict):
    import torch

    with torch.inference_mode():
        return module(inputs)

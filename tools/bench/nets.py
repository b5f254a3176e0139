"""The bench's nets, built for netforge and translated layer by layer into PyTorch.

Named nets (``NETS``): Caffe's LeNet and CIFAR-10 quick (configs/), AlexNet and ResNet-50
(configs/zoo/). For a TRAIN step the net is the train_val prototxt with its data layers
replaced by Input layers of the same shapes (random images, random labels); for predict it
is the deploy prototxt in the TEST phase. ``translate`` turns a netforge plan into a torch
module running the same layers with copies of the same weights, in train or eval mode, so
that both frameworks time the same arithmetic.

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
    from netforge.summary import set_batch_size

    param = config.load_net_param(ROOT / NETS[name].deploy)
    set_batch_size(param, batch)
    return param


def make_solver(name: str, batch: int, seed: int = 1):
    """A netforge SGD solver (momentum, L2 decay) on the TRAIN net of ``name``."""
    from netforge import netforge_pb2 as pb
    from netforge.solver import Solver

    sp = pb.SolverParameter(lr_policy="fixed", max_iter=10**9, random_seed=seed, **SOLVER)
    sp.train_net_param.CopyFrom(train_param(name, batch))
    solver = Solver(sp, metrics=False)
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


# -- the PyTorch translation -----------------------------------------------------------------


def _pair(p, field: str, default: int) -> tuple[int, int]:
    """(h, w) of a kernel/stride/pad field of a Convolution- or PoolingParameter."""
    if p.HasField(f"{field}_h") or p.HasField(f"{field}_w"):
        return int(getattr(p, f"{field}_h")), int(getattr(p, f"{field}_w"))
    values = getattr(p, "kernel_size" if field == "kernel" else field)
    if isinstance(values, int):  # pooling: one optional value
        return (values, values) if (values or field != "stride") else (default, default)
    values = list(values)
    return (values[0], values[-1]) if values else (default, default)


def translate(net, training: bool):
    """A torch.nn.Module running ``net``'s plan, with copies of its weights.

    ``forward(inputs: dict) -> dict`` of every blob. In training mode BatchNorm uses batch
    statistics (when the netforge layer does) and Dropout drops; SoftmaxWithLoss becomes
    cross_entropy. Accuracy layers are skipped.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from netforge import netforge_pb2 as pb

    class PlanModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = []
            self.weights = nn.ParameterList()

        def param(self, blob, learn: bool = True):
            p = nn.Parameter(torch.from_numpy(blob.data.copy()), requires_grad=learn)
            self.weights.append(p)
            return p

        def forward(self, inputs):
            blobs = dict(inputs)
            for fn, bottoms, tops in self.ops:
                outs = fn(*[blobs[b] for b in bottoms])
                if not isinstance(outs, tuple):
                    outs = (outs,)
                blobs.update(zip(tops, outs, strict=False))
            return blobs

    module = PlanModule()
    for step in net.plan.steps:
        layer, lp, kind = step.layer, step.layer.param, step.layer.type
        fn = None
        if kind in ("Input", "Accuracy", "Silence"):
            continue
        in_place = list(lp.bottom[:1]) == list(lp.top[:1])
        if kind == "Convolution":
            p = lp.convolution_param
            weight = module.param(layer.blobs[0])
            bias = module.param(layer.blobs[1]) if p.bias_term else None
            stride, pad = _pair(p, "stride", 1), _pair(p, "pad", 0)
            dilation = (list(p.dilation) or [1])[0]

            def fn(x, w=weight, b=bias, s=stride, pd=pad, d=dilation, g=p.group):
                return F.conv2d(x, w, b, s, pd, d, g)
        elif kind == "Pooling":
            p = lp.pooling_param
            ceil = p.round_mode == pb.PoolingParameter.CEIL
            if p.global_pooling:
                kernel, stride, pad = tuple(step.bottoms[0].shape[2:]), (1, 1), (0, 0)
            else:
                kernel = _pair(p, "kernel", 0)
                stride, pad = _pair(p, "stride", 1), _pair(p, "pad", 0)
            if p.pool == pb.PoolingParameter.MAX:
                def fn(x, k=kernel, s=stride, pd=pad, c=ceil):
                    return F.max_pool2d(x, k, s, pd, ceil_mode=c)
            else:
                def fn(x, k=kernel, s=stride, pd=pad, c=ceil):
                    return F.avg_pool2d(x, k, s, pd, ceil_mode=c, count_include_pad=True)
        elif kind == "LRN":
            p = lp.lrn_param

            def fn(x, n=p.local_size, a=p.alpha, b=p.beta, k=p.k):
                return F.local_response_norm(x, n, a, b, k)
        elif kind == "BatchNorm":
            scale = float(layer.blobs[2].data.ravel()[0])
            factor = 0.0 if scale == 0 else 1.0 / scale
            mean = torch.from_numpy(layer.blobs[0].data * factor)
            var = torch.from_numpy(layer.blobs[1].data * factor)
            batch_stats = training and not layer.use_global_stats

            def fn(x, m=mean, v=var, eps=lp.batch_norm_param.eps, t=batch_stats,
                   mom=1 - lp.batch_norm_param.moving_average_fraction):
                return F.batch_norm(x, m, v, training=t, momentum=mom, eps=eps)
        elif kind == "Scale":
            gamma = module.param(layer.blobs[0])
            beta = module.param(layer.blobs[1]) if len(layer.blobs) > 1 else None

            def fn(x, g=gamma, b=beta):
                shape = (1, -1) + (1,) * (x.dim() - 2)
                y = x * g.view(shape)
                return y if b is None else y + b.view(shape)
        elif kind == "InnerProduct":
            weight = module.param(layer.blobs[0])
            bias = module.param(layer.blobs[1]) if len(layer.blobs) > 1 else None
            axis = lp.inner_product_param.axis

            def fn(x, w=weight, b=bias, a=axis):
                return F.linear(x.flatten(a), w, b)
        elif kind == "ReLU":
            slope = lp.relu_param.negative_slope

            def fn(x, s=slope, inplace=in_place):
                if s:
                    return F.leaky_relu(x, s, inplace=inplace)
                return F.relu(x, inplace=inplace)
        elif kind == "Dropout":
            ratio = lp.dropout_param.dropout_ratio

            # Not in place: autograd's ReLU before it keeps its output for backward.
            def fn(x, r=ratio, t=training and layer.phase == "TRAIN"):
                return F.dropout(x, r, training=t)
        elif kind == "Softmax":
            def fn(x, a=lp.softmax_param.axis):
                return F.softmax(x, dim=a)
        elif kind == "SoftmaxWithLoss":
            def fn(x, label):
                return F.cross_entropy(x, label.long())
        elif kind == "Concat":
            def fn(*xs, a=lp.concat_param.axis):
                return torch.cat(xs, dim=a)
        elif kind == "Split":
            copies = len(step.top_names)

            def fn(x, n=copies):
                return (x,) * n
        elif kind == "Flatten":
            def fn(x):
                return x.flatten(1)
        elif kind == "Eltwise":
            p = lp.eltwise_param
            coeffs = list(p.coeff) or [1.0] * len(step.bottoms)

            def fn(*xs, op=p.operation, c=coeffs):
                out = xs[0] if c[0] == 1 else c[0] * xs[0]
                for ci, x in zip(c[1:], xs[1:], strict=True):
                    if op == pb.EltwiseParameter.PROD:
                        out = out * x
                    elif op == pb.EltwiseParameter.MAX:
                        out = torch.maximum(out, x)
                    else:
                        out = out + (x if ci == 1 else ci * x)
                return out
        if fn is None:
            raise SystemExit(f'no PyTorch translation for layer type "{kind}" ({layer.name})')
        module.ops.append((fn, step.bottom_names, step.top_names))
    module.train(training)
    return module


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

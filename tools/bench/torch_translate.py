"""A compiled netforge plan translated layer by layer into a PyTorch module (the benchmarks'
oracle: tools/bench/cpu.py, zoo.py and predict.py time and check netforge against it).

``translate(net, training)`` walks ``net.plan.steps`` and builds one torch function per
layer, holding copies of the netforge weights, so that both frameworks run the same
arithmetic on the same numbers. Supported layer types:

  Convolution, Deconvolution (group, dilation, separate h/w geometry), Pooling MAX/AVE
  (Caffe's ceil rounding with the last window clipped to the padded input, global pooling),
  LRN (ACROSS_CHANNELS, WITHIN_CHANNEL), BatchNorm (stored statistics; batch statistics when
  training and the layer does not use global stats), Scale and Bias (learned or second
  bottom, any axis), InnerProduct, ReLU (leaky), Sigmoid, TanH, Dropout, Softmax,
  SoftmaxWithLoss (ignore_label, normalization), Accuracy (top_k, ignore_label), Concat,
  Eltwise (SUM with coefficients, PROD, MAX), Split, Flatten, Reshape; Input and Silence
  are skipped. Any other type stops with a message naming the layer.

PyTorch is a benchmark oracle only; netforge never imports it (nor this module).
"""

from __future__ import annotations


def _window(p, field: str, default: int) -> tuple[int, int]:
    """(h, w) of a kernel/stride/pad field of a Convolution- or PoolingParameter: the
    explicit ``<field>_h``/``<field>_w`` pair if set, else the (repeated or single) field."""
    if p.HasField(f"{field}_h") or p.HasField(f"{field}_w"):
        return int(getattr(p, f"{field}_h")), int(getattr(p, f"{field}_w"))
    values = getattr(p, "kernel_size" if field == "kernel" else field)
    if isinstance(values, int):  # pooling: one optional value (stride's default is 1)
        return (values, values) if (values or field != "stride") else (default, default)
    values = list(values)
    return (values[0], values[-1]) if values else (default, default)


def _conv_geometry(p) -> dict:
    """conv2d / conv_transpose2d keyword arguments of a ConvolutionParameter."""
    dilation = list(p.dilation) or [1]  # repeated, no _h/_w variant
    return {"stride": _window(p, "stride", 1), "padding": _window(p, "pad", 0),
            "dilation": (dilation[0], dilation[-1]), "groups": p.group}


def _channel_view(operand, x, axis: int):
    """``operand`` reshaped to broadcast against ``x`` from ``axis`` on (Scale/Bias)."""
    axis = axis % x.dim()
    return operand.view((1,) * axis + tuple(operand.shape)
                        + (1,) * (x.dim() - axis - operand.dim()))


def translate(net, training: bool = False):
    """A torch.nn.Module running ``net``'s plan, with copies of its weights.

    ``forward(inputs)`` takes a dict {input blob name: tensor} (or one tensor for a net with
    a single input) and returns a dict of every blob. In training mode BatchNorm uses batch
    statistics (when the netforge layer does) and TRAIN-phase Dropout drops; otherwise both
    are the TEST-phase functions.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from netforge import netforge_pb2 as pb

    class PlanModule(nn.Module):
        def __init__(self, input_names):
            super().__init__()
            self.input_names = list(input_names)
            self.ops = []
            self.weights = nn.ParameterList()

        def param(self, blob, learn: bool = True):
            p = nn.Parameter(torch.from_numpy(blob.data.copy()), requires_grad=learn)
            self.weights.append(p)
            return p

        def forward(self, inputs):
            if not isinstance(inputs, dict):
                (name,) = self.input_names  # a bare tensor needs a single-input net
                inputs = {name: inputs}
            blobs = dict(inputs)
            for fn, bottoms, tops in self.ops:
                outs = fn(*[blobs[b] for b in bottoms])
                if not isinstance(outs, tuple):
                    outs = (outs,)
                blobs.update(zip(tops, outs, strict=True))
            return blobs

    module = PlanModule(net.inputs)
    for step in net.plan.steps:
        layer, lp, kind = step.layer, step.layer.param, step.layer.type
        fn = None
        if kind in ("Input", "Silence"):
            continue
        # In place only when netforge computes in place too (bottom blob == top blob).
        in_place = list(lp.bottom[:1]) == list(lp.top[:1])
        if kind in ("Convolution", "Deconvolution"):
            p = lp.convolution_param
            weight = module.param(layer.blobs[0])
            bias = module.param(layer.blobs[1]) if p.bias_term else None
            # Caffe stores deconvolution weights (C_in, C_out/group, kh, kw): torch's layout.
            conv = F.conv2d if kind == "Convolution" else F.conv_transpose2d
            geometry = _conv_geometry(p)

            def fn(x, w=weight, b=bias, op=conv, geo=geometry):
                return op(x, w, b, **geo)
        elif kind == "Pooling":
            p = lp.pooling_param
            # torch's ceil_mode is Caffe's rule: round up, but drop a last window that would
            # start in the padding; AVE divides by the window clipped to the padded input
            # (count_include_pad), as Caffe does.
            ceil = p.round_mode == pb.PoolingParameter.CEIL
            if p.global_pooling:
                kernel, stride, pad = tuple(step.bottoms[0].shape[2:]), (1, 1), (0, 0)
            else:
                kernel = _window(p, "kernel", 0)
                stride, pad = _window(p, "stride", 1), _window(p, "pad", 0)
            if p.pool == pb.PoolingParameter.MAX:
                def fn(x, k=kernel, s=stride, pd=pad, c=ceil):
                    return F.max_pool2d(x, k, s, pd, ceil_mode=c)
            elif p.pool == pb.PoolingParameter.AVE:
                def fn(x, k=kernel, s=stride, pd=pad, c=ceil):
                    return F.avg_pool2d(x, k, s, pd, ceil_mode=c, count_include_pad=True)
        elif kind == "LRN":
            p = lp.lrn_param
            if p.norm_region == pb.LRNParameter.ACROSS_CHANNELS:
                def fn(x, n=p.local_size, a=p.alpha, b=p.beta, k=p.k):
                    return F.local_response_norm(x, n, a, b, k)
            else:  # WITHIN_CHANNEL: x (1 + alpha mean(x² over n×n, zero-padded))^-beta
                def fn(x, n=p.local_size, a=p.alpha, b=p.beta):
                    mean_sq = F.avg_pool2d(x * x, n, 1, (n - 1) // 2, count_include_pad=True)
                    return x * (1 + a * mean_sq) ** -b
        elif kind == "BatchNorm":
            # Caffe stores sum-scaled statistics: blobs (mean·s, var·s, s).
            scale = float(layer.blobs[2].data.ravel()[0])
            factor = 0.0 if scale == 0 else 1.0 / scale
            mean = torch.from_numpy(layer.blobs[0].data * factor)
            var = torch.from_numpy(layer.blobs[1].data * factor)
            batch_stats = training and not layer.use_global_stats

            def fn(x, m=mean, v=var, eps=lp.batch_norm_param.eps, t=batch_stats,
                   mom=1 - lp.batch_norm_param.moving_average_fraction):
                return F.batch_norm(x, m, v, training=t, momentum=mom, eps=eps)
        elif kind == "Scale":
            p = lp.scale_param
            # One bottom: blobs (scale[, bias]); two bottoms: the scale is bottom 1, blobs
            # ([bias]).
            learned = len(step.bottom_names) == 1
            gamma = module.param(layer.blobs[0]) if learned else None
            beta = module.param(layer.blobs[-1]) if p.bias_term else None

            def fn(x, *s, g=gamma, b=beta, a=p.axis):
                y = x * _channel_view(s[0] if s else g, x, a)
                return y if b is None else y + _channel_view(b, x, a)
        elif kind == "Bias":
            beta = module.param(layer.blobs[0]) if len(step.bottom_names) == 1 else None

            def fn(x, *s, b=beta, a=lp.bias_param.axis):
                return x + _channel_view(s[0] if s else b, x, a)
        elif kind == "InnerProduct":
            p = lp.inner_product_param
            weight = module.param(layer.blobs[0])
            bias = module.param(layer.blobs[1]) if p.bias_term else None

            def fn(x, w=weight, b=bias, a=p.axis, t=p.transpose):
                return F.linear(x.flatten(a), w.t() if t else w, b)
        elif kind == "ReLU":
            slope = lp.relu_param.negative_slope

            def fn(x, s=slope, inplace=in_place):
                if s:
                    return F.leaky_relu(x, s, inplace=inplace)
                return F.relu(x, inplace=inplace)
        elif kind == "Sigmoid":
            fn = torch.sigmoid
        elif kind == "TanH":
            fn = torch.tanh
        elif kind == "Dropout":
            ratio = lp.dropout_param.dropout_ratio

            # Not in place: autograd's ReLU before it keeps its output for backward.
            def fn(x, r=ratio, t=training and layer.phase == "TRAIN"):
                return F.dropout(x, r, training=t)
        elif kind == "Softmax":
            def fn(x, a=lp.softmax_param.axis):
                return F.softmax(x, dim=a)
        elif kind == "SoftmaxWithLoss":
            fn = _softmax_loss(lp.loss_param, F, pb)
        elif kind == "Accuracy":
            p = lp.accuracy_param
            ignore = p.ignore_label if p.HasField("ignore_label") else None

            @torch.no_grad()
            def fn(x, label, k=p.top_k, ignore=ignore):
                label = label.long().flatten()
                hits = (x.flatten(1).topk(k, dim=1).indices == label[:, None]).any(dim=1)
                keep = label != ignore if ignore is not None else torch.ones_like(hits)
                return (hits & keep).sum().to(x.dtype) / keep.sum().clamp(min=1)
        elif kind == "Concat":
            def fn(*xs, a=lp.concat_param.axis):
                return torch.cat(xs, dim=a)
        elif kind == "Split":
            copies = len(step.top_names)

            def fn(x, n=copies):
                return (x,) * n
        elif kind == "Flatten":
            def fn(x, a=lp.flatten_param.axis, e=lp.flatten_param.end_axis):
                return x.flatten(a, e)
        elif kind == "Reshape":
            # The compiled top shape (batch included): the plan is built for one batch size.
            top_shape = tuple(step.tops[0].shape)

            def fn(x, shape=top_shape):
                return x.reshape(shape)
        elif kind == "Eltwise":
            fn = _eltwise(lp.eltwise_param, len(step.bottoms), torch, pb)
        if fn is None:
            raise SystemExit(f'no PyTorch translation for layer type "{kind}" ({layer.name})')
        module.ops.append((fn, step.bottom_names, step.top_names))
    module.train(training)
    return module


def _softmax_loss(p, F, pb):
    """Caffe's SoftmaxWithLoss: mean cross entropy over the labels that count (VALID), the
    batch (BATCH_SIZE), every label (FULL) or a plain sum (NONE)."""
    ignore = p.ignore_label if p.HasField("ignore_label") else -100
    norm = pb.LossParameter
    mode = norm.VALID  # Caffe's default; the deprecated ``normalize`` bool if set
    if p.HasField("normalization"):
        mode = p.normalization
    elif p.HasField("normalize"):
        mode = norm.VALID if p.normalize else norm.BATCH_SIZE

    def fn(x, label):
        label = label.long().reshape(x.shape[:1] + x.shape[2:])
        if mode == norm.VALID:
            return F.cross_entropy(x, label, ignore_index=ignore)
        total = F.cross_entropy(x, label, ignore_index=ignore, reduction="sum")
        if mode == norm.NONE:
            return total
        return total / (x.shape[0] if mode == norm.BATCH_SIZE else label.numel())

    return fn


def _eltwise(p, count: int, torch, pb):
    """Caffe's Eltwise: SUM with per-bottom coefficients, PROD, MAX."""
    coeffs = list(p.coeff) or [1.0] * count

    def fn(*xs, op=p.operation, c=coeffs):
        if op == pb.EltwiseParameter.PROD:
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return out
        if op == pb.EltwiseParameter.MAX:
            out = xs[0]
            for x in xs[1:]:
                out = torch.maximum(out, x)
            return out
        out = c[0] * xs[0] if c[0] != 1 else xs[0]
        for ci, x in zip(c[1:], xs[1:], strict=True):
            out = out + (ci * x if ci != 1 else x)
        return out

    return fn

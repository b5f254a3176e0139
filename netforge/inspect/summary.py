"""``netforge summary``: a per-layer table of top shapes, parameter counts and FLOPs.

FLOPs are forward-pass estimates for one batch, counting a multiply-add as 2 FLOPs:
  Convolution      2 · top count · (C_in/group · kernel volume)       (the weight blob's row)
  Deconvolution    2 · bottom count · (C_out/group · kernel volume)
  InnerProduct     2 · top count · K                                   (K inputs per output)
  Pooling          top count · kernel area   (one compare or add per window element)
  LRN              bottom count · (local_size + 5) across channels; · (local_size² + 5) within
  BatchNorm / MVN  2 / 4 per element;  Scale, Bias 1 per element (+1 for Scale's bias)
  element-wise     1 per element (ReLU, Sigmoid, TanH, Power, ...); Eltwise (#bottoms−1) per
                   output element; Softmax and softmax losses 3 per element
Structural layers (Input, Concat, Split, Flatten, Reshape, Slice, Dropout at TEST ...) cost 0.
Other types are shown as "-" and left out of the total rather than guessed.
Parameters are counted once per blob (shared blobs at their owner), BatchNorm statistics
included, as they are stored in the weights file.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError

# Per-element FLOP costs of layers whose work is proportional to their output size.
_PER_OUTPUT = {
    "ReLU": 1, "PReLU": 2, "ELU": 3, "Sigmoid": 4, "TanH": 4, "Swish": 5, "AbsVal": 1,
    "BNLL": 3, "Power": 3, "Exp": 3, "Log": 3, "Threshold": 1, "Clip": 2,
    "BatchNorm": 2, "MVN": 4, "Bias": 1, "Softmax": 3,
}
_FREE = {
    "Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData",
    "Concat", "Split", "Slice", "Flatten", "Reshape", "Silence", "Crop", "Tile",
    "BatchReindex", "Filter", "Parameter", "Im2col", "Embed",
}
_SOFTMAX_LOSSES = {"SoftmaxWithLoss", "InfogainLoss"}


@dataclass
class LayerSummary:
    name: str
    type: str
    top_shapes: list[tuple[int, ...]]
    params: int
    flops: int | None  # None: no estimate for this layer type


def set_batch_size(param: pb.NetParameter, batch: int) -> None:
    """Give every input/data layer of ``param`` the batch size ``batch`` (in place)."""
    if batch < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch}")
    for layer in param.layer:
        for shape in list(layer.input_param.shape) + list(layer.dummy_data_param.shape):
            if shape.dim:
                shape.dim[0] = batch
        for field in ("data_param", "image_data_param", "hdf5_data_param",
                      "memory_data_param", "window_data_param"):
            if layer.HasField(field):
                getattr(layer, field).batch_size = batch


def _pooling_window(layer, bottom_shape) -> int:
    p = layer.param.pooling_param
    if p.global_pooling:
        return prod(bottom_shape[2:])
    kh = p.kernel_h if p.HasField("kernel_h") else p.kernel_size
    kw = p.kernel_w if p.HasField("kernel_w") else p.kernel_size
    return kh * kw


def layer_flops(layer, bottom_shapes, top_shapes, phase: str) -> int | None:
    """Forward FLOPs of one layer (see the module docstring), or None if not estimated."""
    kind = layer.type
    top = prod(top_shapes[0]) if top_shapes else 0
    bottom = prod(bottom_shapes[0]) if bottom_shapes else 0
    if kind in _FREE or (kind == "Dropout" and phase == "TEST"):
        return 0
    if kind == "Convolution" and layer.blobs:
        return 2 * top * prod(layer.blobs[0].shape[1:])
    if kind == "Deconvolution" and layer.blobs:
        return 2 * bottom * prod(layer.blobs[0].shape[1:])
    if kind == "InnerProduct" and layer.blobs:
        num_output = layer.param.inner_product_param.num_output
        return 2 * top * (layer.blobs[0].count // max(num_output, 1))
    if kind == "Pooling":
        return sum(prod(s) for s in top_shapes[:1]) * _pooling_window(layer, bottom_shapes[0])
    if kind == "LRN":
        p = layer.param.lrn_param
        window = p.local_size if p.norm_region == p.ACROSS_CHANNELS else p.local_size ** 2
        return bottom * (window + 5)
    if kind == "Eltwise":
        return top * max(len(bottom_shapes) - 1, 1)
    if kind == "Scale":
        return top * (2 if layer.param.scale_param.bias_term else 1)
    if kind == "Dropout":
        return top
    if kind in _PER_OUTPUT:
        return top * _PER_OUTPUT[kind]
    if kind in _SOFTMAX_LOSSES:
        return 3 * bottom
    if kind in ("EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "Accuracy"):
        return 2 * bottom
    return None


def summarize(net) -> list[LayerSummary]:
    """One row per layer of the net file (auto-inserted Split layers are left out)."""
    declared = {layer.name for layer in net.param.layer}
    owner_seen: set[int] = set()
    rows = []
    for step in net.plan.steps:
        layer = step.layer
        params = 0
        for blob in layer.blobs:
            if id(blob) not in owner_seen:
                owner_seen.add(id(blob))
                params += blob.count
        if layer.name not in declared:
            continue
        bottom_shapes = [b.shape for b in step.bottoms]
        top_shapes = [t.shape for t in step.tops]
        rows.append(LayerSummary(layer.name, layer.type, top_shapes, params,
                                 layer_flops(layer, bottom_shapes, top_shapes, net.phase)))
    return rows


def _shape_text(shapes) -> str:
    return ", ".join("×".join(str(d) for d in shape) if shape else "scalar" for shape in shapes)


def _human(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"


def format_table(rows: list[LayerSummary], title: str = "") -> str:
    """The summary as an aligned text table with a totals line."""
    header = ("layer", "type", "top shapes", "params", "FLOPs")
    body = [
        (r.name, r.type, _shape_text(r.top_shapes), f"{r.params:,}",
         "-" if r.flops is None else f"{r.flops:,}")
        for r in rows
    ]
    total_params = sum(r.params for r in rows)
    total_flops = sum(r.flops or 0 for r in rows)
    unestimated = [r.name for r in rows if r.flops is None]
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h)
              for i, h in enumerate(header)]

    def line(cells) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:3], widths[:3], strict=True)]
        right = [c.rjust(w) for c, w in zip(cells[3:], widths[3:], strict=True)]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(header))
    out = []
    if title:
        out.append(title)
    out.append("FLOPs: forward pass, one multiply-add = 2 FLOPs")
    out += [line(header), rule] + [line(cells) for cells in body] + [rule]
    out.append(f"Total params: {total_params:,} ({_human(total_params)})")
    out.append(f"Total FLOPs:  {total_flops:,} ({_human(total_flops)}FLOPs)")
    if unestimated:
        out.append(f"FLOPs not estimated for: {', '.join(unestimated)}")
    return "\n".join(out)


def summary_of_file(path, phase: str = "TEST", batch: int | None = None, level: int = 0,
                    stages=()) -> tuple[str, list[LayerSummary]]:
    """Build the net of ``path`` (phase, optional batch size) and summarise it."""
    from netforge.net import Net

    param = config.load_net_param(path)
    if batch is not None:
        set_batch_size(param, batch)
    net = Net(param, phase.lower(), level=level, stages=stages,
              base_dirs=(Path(path).resolve().parent,))
    try:
        rows = summarize(net)
    finally:
        net.close()
    return net.name, rows

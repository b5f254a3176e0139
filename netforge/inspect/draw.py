"""``netforge draw``: a net as a Graphviz graph (pycaffe's ``caffe.draw``).

Layers are boxes coloured by type (Caffe's colours), blobs are octagons, edges run blob ->
layer -> blob. A layer that works in place (top = bottom) writes a new version of its blob,
drawn as a new node with the same name, so the graph stays acyclic. The ``.dot`` text is
written here without any Python dependency; ``.svg``/``.png``/``.pdf`` need Graphviz's
``dot`` program.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, NetforgeError, RunError
from netforge.files import atomic_path, atomic_write_bytes

RENDERED_FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
           "InnerProduct": "#CC33FF"}
_DEFAULT_COLOR = "#6495ED"
_NEURON_COLOR = "#90EE90"
_BLOB_COLOR = "#E0E0E0"


class GraphvizMissingError(NetforgeError):
    """Rendering needs Graphviz's ``dot`` program, which is not installed."""


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _window(p, stem: str, field: str, default: int) -> str:
    h, w = f"{stem}_h", f"{stem}_w"
    if p.HasField(h) or p.HasField(w):
        return f"{getattr(p, h)}x{getattr(p, w)}"
    value = getattr(p, field)
    if isinstance(value, int):  # PoolingParameter: one number, with its proto default
        return str(value)
    return "x".join(str(v) for v in (list(value) or [default]))


def layer_label(layer: pb.LayerParameter) -> str:
    """Name, type and the parameters a reader of the graph wants to see."""
    lines = [layer.name, f"({layer.type})"]
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        lines.append(f"{p.num_output} out, kernel {_window(p, 'kernel', 'kernel_size', 0)}")
        lines.append(f"stride {_window(p, 'stride', 'stride', 1)}, "
                     f"pad {_window(p, 'pad', 'pad', 0)}" + (f", group {p.group}"
                                                             if p.group > 1 else ""))
    elif layer.type == "Pooling":
        p = layer.pooling_param
        method = pb.PoolingParameter.PoolMethod.Name(p.pool)
        if p.global_pooling:
            lines.append(f"{method} global")
        else:
            lines.append(f"{method} kernel {_window(p, 'kernel', 'kernel_size', 0)}")
            lines.append(f"stride {_window(p, 'stride', 'stride', 1)}, "
                         f"pad {_window(p, 'pad', 'pad', 0)}")
    elif layer.type == "InnerProduct":
        lines.append(f"{layer.inner_product_param.num_output} out")
    elif layer.type == "LRN":
        lines.append(f"size {layer.lrn_param.local_size}")
    elif layer.type == "Dropout":
        lines.append(f"ratio {layer.dropout_param.dropout_ratio:g}")
    elif layer.type == "Input":
        shapes = [" ".join(str(d) for d in s.dim) for s in layer.input_param.shape]
        lines.extend(shapes)
    return "\\n".join(_quote(line)[1:-1] for line in lines)


def net_to_dot(net: pb.NetParameter, rankdir: str = "LR", phase: str | None = None) -> str:
    """Graphviz source for ``net``; ``phase`` "TRAIN"/"TEST" keeps that phase's layers,
    None (or "ALL") draws every layer."""
    rankdir = rankdir.upper()
    if rankdir not in ("LR", "TB", "BT", "RL"):
        raise ConfigError(f"rankdir must be LR, TB, BT or RL, got {rankdir}")
    if phase and phase.upper() != "ALL":
        net = config.filter_net(net, config.make_state(phase.upper()), net.name or "net")
    lines = [f"digraph {_quote(net.name or 'net')} {{",
             f"  rankdir={rankdir};",
             f"  label={_quote(net.name or 'net')};",
             '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    version: dict[str, int] = {}

    def blob_node(name: str, new: bool) -> str:
        if new or name not in version:
            version[name] = version.get(name, -1) + 1
            node = f"blob:{name}#{version[name]}"
            lines.append(f"  {_quote(node)} [label={_quote(name)}, shape=octagon, "
                         f'style=filled, fillcolor="{_BLOB_COLOR}"];')
        return f"blob:{name}#{version[name]}"

    for index, layer in enumerate(net.layer):
        node = f"layer:{index}:{layer.name}"
        in_place = list(layer.top) == list(layer.bottom[:len(layer.top)]) and bool(layer.top)
        color = _NEURON_COLOR if in_place else _COLORS.get(layer.type, _DEFAULT_COLOR)
        lines.append(f'  {_quote(node)} [label="{layer_label(layer)}", shape=box, '
                     f'style=filled, fillcolor="{color}"];')
        for bottom in layer.bottom:
            lines.append(f"  {_quote(blob_node(bottom, new=False))} -> {_quote(node)};")
        for top in layer.top:
            lines.append(f"  {_quote(node)} -> {_quote(blob_node(top, new=True))};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_net_to_file(net_file, output, rankdir: str = "LR", phase: str | None = None) -> Path:
    """Write the graph of the net in ``net_file`` to ``output`` (.dot, or .svg/.png/.pdf
    rendered by Graphviz's ``dot``). Raises GraphvizMissingError when ``dot`` is needed but
    not installed."""
    output = Path(output)
    source = net_to_dot(config.load_net_param(net_file), rankdir, phase)
    suffix = output.suffix.lower()
    if suffix in (".dot", ".gv", ".raw"):
        atomic_write_bytes(output, source.encode())
        return output
    if suffix not in RENDERED_FORMATS:
        raise ConfigError(f"{output}: unknown output format {suffix or '(none)'}; use .dot, "
                          ".svg, .png or .pdf")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissingError(
            f"{output}: drawing {suffix} needs Graphviz's `dot` program, which is not "
            "installed; install Graphviz (apt-get install graphviz, brew install graphviz, "
            "conda install graphviz) or write a .dot file and render it elsewhere")
    with atomic_path(output) as tmp:
        result = subprocess.run([dot, f"-T{RENDERED_FORMATS[suffix]}", "-o", str(tmp)],
                                input=source, text=True, capture_output=True, check=False)
        if result.returncode != 0:
            raise RunError(f"{output}: Graphviz dot failed: {result.stderr.strip()}")
    return output

"""Frozen models: one file holding a deploy net, its weights, preprocessing and labels.

The file is a binary NetParameter, as a ``.caffemodel`` is (every layer carries its blobs),
whose netforge extension field ``frozen`` (FrozenModelInfo) adds the preprocessing, the class
labels and the netforge version. So a frozen model also works as ``--weights`` and Caffe
reads it as a caffemodel; netforge tells it apart by that field.

Freezing may rewrite the graph for inference:
  * fold BatchNorm (+ Scale) into the Convolution before it:
        w' = w · γ/σ,  b' = (b − μ) · γ/σ + β,   σ = sqrt(var + eps)
    where μ, var are BatchNorm's accumulated statistics divided by its scale factor;
  * remove Dropout (the identity at TEST).
The rewritten net is checked against the original on a random batch before it is written.

Loading never runs code from the file: a net with a ``Python`` layer is refused before any
layer is built, as are layers that read or write other files (the model must be
self-contained).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.data.records import array_to_blobproto, blobproto_to_array
from netforge.deploy.preprocess import Preprocess
from netforge.errors import ConfigError, DataError, RunError, ShapeError
from netforge.files import atomic_write_bytes, is_text_file
from netforge.layers.python_layer import python_layers_allowed
from netforge.net import Net
from netforge.version import __version__
from netforge.weights import blob_shape_matches

log = logging.getLogger("netforge")

FORMAT_VERSION = 1
# Layers whose presence would make loading run code or touch other files.
_CODE_LAYERS = {"Python"}
_FILE_LAYERS = {"Data", "ImageData", "HDF5Data", "HDF5Output", "WindowData"}


@dataclass
class FrozenModel:
    """A loaded frozen model: the net (TEST phase, weights in place) and how to feed it."""

    net: Net
    preprocess: Preprocess
    labels: list[str]
    info: pb.FrozenModelInfo
    path: str = ""


# -- reading ---------------------------------------------------------------------------------


FROZEN_SUFFIX = ".nf"  # what `netforge freeze` users write; any name is read by content


def read_frozen_param(path) -> pb.NetParameter | None:
    """The file's NetParameter if it is a frozen model, else None (a prototxt, a plain
    caffemodel, anything else). Damaged frozen files raise DataError."""
    path = Path(path)
    if path.suffix in (".prototxt", ".pbtxt", ".txt") or not path.is_file():
        return None
    data = path.read_bytes()
    named_frozen = path.suffix == FROZEN_SUFFIX
    if not data:
        if named_frozen:
            raise DataError(f"{path}: empty file (0 bytes), not a frozen model; write it again "
                            "with `netforge freeze`")
        return None
    param = pb.NetParameter()
    try:
        param.ParseFromString(data)
        parsed = True
    except Exception:  # noqa: BLE001 - not a binary NetParameter (a text file, say)
        parsed = False
    if parsed and param.HasField("frozen"):
        return param
    if named_frozen or (not parsed and not is_text_file(path)):
        # Binary, yet not a whole frozen model: truncated or damaged, not a prototxt.
        raise DataError(f"{path}: damaged or truncated frozen model (not a complete "
                        "`netforge freeze` file)")
    return None


def is_frozen_file(path) -> bool:
    return read_frozen_param(path) is not None


def check_self_contained(param: pb.NetParameter, where: str) -> None:
    """Refuse nets that would run code (Python layers) or read/write other files."""
    for layer in param.layer:
        if layer.type in _CODE_LAYERS and not python_layers_allowed():
            raise ConfigError(
                f'{where}: layer "{layer.name}" is a Python layer '
                f'(module "{layer.python_param.module}"); frozen models never run code named '
                "in the file unless told (--allow-python-layers, "
                "netforge.allow_python_layers())"
            )
        if layer.type in _FILE_LAYERS:
            raise ConfigError(
                f'{where}: layer "{layer.name}" ({layer.type}) reads or writes other files; a '
                "frozen model must be self-contained (feed images through an Input layer)"
            )


def load_frozen(path, *, reuse_memory: bool = False) -> FrozenModel:
    """Load a frozen model written by ``freeze``; the net is in TEST phase.

    ``reuse_memory``: for a net that only predicts, activations share memory (see
    ``Net``); intermediate blobs are then unreadable and backward is refused.
    """
    where = str(path)
    param = config.read_binary(path, pb.NetParameter(), "frozen model")
    if not param.HasField("frozen"):
        raise DataError(f"{where} is not a frozen model (no netforge frozen-model section); "
                        "freeze one with `netforge freeze`, or give a deploy prototxt and "
                        "--weights")
    info = param.frozen
    if info.format_version > FORMAT_VERSION:
        raise DataError(f"{where} was written by netforge {info.netforge_version} in frozen "
                        f"format {info.format_version}; this netforge ({__version__}) reads "
                        f"format {FORMAT_VERSION} only")
    check_self_contained(param, where)
    net = build_with_blobs(param, where, reuse_memory=reuse_memory)
    preprocess = Preprocess.from_proto(info.preprocessing)
    if not preprocess.input:
        preprocess.input = _image_input(net, where)
    if preprocess.input not in net.blobs:
        raise DataError(f'{where}: preprocessing names input "{preprocess.input}", which the '
                        "net does not have")
    preprocess.bind(net.blobs[preprocess.input].shape)
    return FrozenModel(net, preprocess, list(info.labels), info, where)


def build_with_blobs(param: pb.NetParameter, where: str, reuse_memory: bool = False) -> Net:
    """A TEST-phase Net of ``param`` whose layers carry their weights as ``blobs``."""
    definition = pb.NetParameter()
    definition.CopyFrom(param)
    definition.ClearField("frozen")
    for layer in definition.layer:
        layer.ClearField("blobs")
        _clear_fillers(layer)  # the weights come from the file: skip random initialisation
    net = Net(definition, "test", reuse_memory=reuse_memory)
    net.source = where
    layers = net.layer_dict
    for layer in param.layer:
        target = layers.get(layer.name)
        if target is None:
            continue
        if len(layer.blobs) != len(target.blobs):
            raise ShapeError(f'{where}: layer "{layer.name}" holds {len(layer.blobs)} blob(s) '
                             f"but the net needs {len(target.blobs)}")
        for k, proto in enumerate(layer.blobs):
            blob = target.blobs[k]
            if not blob_shape_matches(blob.shape, proto):
                raise ShapeError(f'{where}: layer "{layer.name}" blob {k} has the wrong shape '
                                 f"for the net's {blob.shape}")
            values = blobproto_to_array(proto, where=f'{where}: layer "{layer.name}" blob {k}')
            blob.data[...] = blob.xp.asarray(values.reshape(blob.shape))
    return net


def _clear_fillers(layer: pb.LayerParameter) -> None:
    for field in ("convolution_param", "inner_product_param"):
        if layer.HasField(field):
            getattr(layer, field).ClearField("weight_filler")
            getattr(layer, field).ClearField("bias_filler")


def _image_input(net: Net, where: str) -> str:
    if not net.inputs:
        raise ConfigError(f"{where}: the net has no Input layer to feed images into; use a "
                          "deploy net (an Input layer instead of data layers)")
    if len(net.inputs) > 1:
        log.warning("%s: the net has %d inputs; images go into the first, %s", where,
                    len(net.inputs), net.inputs[0])
    return net.inputs[0]


# -- writing ---------------------------------------------------------------------------------


def read_labels(path) -> list[str]:
    """Class names, one a line (Caffe's synset_words.txt, or the labels.txt that
    ``netforge convert`` writes); trailing blank lines are dropped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read labels file {path}: {exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def prediction_output(net: Net) -> str | None:
    """The output holding class scores: the top of the last Softmax layer when it is an
    output, else the first output (pycaffe's ``outputs[0]``; outputs are sorted by name)."""
    for step in reversed(net.plan.steps):
        if step.layer.type == "Softmax" and step.top_names[0] in net.outputs:
            return step.top_names[0]
    return net.outputs[0] if net.outputs else None


def check_labels(net: Net, labels: list[str], where: str = "labels",
                 output: str | None = None) -> None:
    """The prediction output must have one value per label and sample."""
    output = output or prediction_output(net)
    if not labels or output is None:
        return
    shape = net.blobs[output].shape
    classes = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if classes != len(labels):
        raise ConfigError(f'{where}: {len(labels)} labels but the output "{output}" '
                          f"has {classes} classes")


def deploy_param_with_blobs(net: Net) -> pb.NetParameter:
    """The net's own (filtered, upgraded) definition, each layer with its weights; unlike
    ``Net.to_proto`` it leaves out the Split layers the compiler inserted."""
    out = pb.NetParameter()
    out.CopyFrom(net.param)
    layers = net.layer_dict
    for layer in out.layer:
        layer.ClearField("blobs")
        for blob in layers[layer.name].blobs:
            data = blob.data if isinstance(blob.data, np.ndarray) else blob.data.get()
            layer.blobs.add().CopyFrom(array_to_blobproto(data))
    return out


def freeze(model, weights, output, preprocess: Preprocess, *, labels: list[str] | None = None,
           fold_bn: bool = False, drop_dropout: bool = False, overwrite: bool = False,
           check: bool = True) -> pb.NetParameter:
    """Write a frozen model of deploy net ``model`` with ``weights`` to ``output``.

    Returns the NetParameter written. Raises ConfigError when ``output`` exists and not
    ``overwrite``, when the net cannot be frozen, or when the labels do not fit it.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise ConfigError(f"{output} already exists; pass --overwrite to replace it")
    source = config.load_net_param(model)
    check_self_contained(config.filter_net(source, config.make_state("TEST"), str(model)),
                         str(model))
    net = Net(model, "test", weights=weights)
    if net.layers_without_weights:
        raise ConfigError(
            f"{weights} has no weights for layer(s) {', '.join(net.layers_without_weights)} "
            f"of {model}: a frozen model would predict with their random initial values "
            "(renamed layers? the names must match the trained net's)")
    preprocess.input = preprocess.input or _image_input(net, str(model))
    if preprocess.input not in net.inputs:
        raise ConfigError(f'{model}: "{preprocess.input}" is not an input of the net '
                          f"(inputs: {', '.join(net.inputs) or 'none'})")
    preprocess.bind(net.blobs[preprocess.input].shape)
    labels = list(labels or [])
    check_labels(net, labels, f"{model}")

    param = deploy_param_with_blobs(net)
    folded = removed = []
    if fold_bn:
        param, folded = fold_batch_norm(param)
        log.info("folded %d BatchNorm/Scale chain(s) into convolutions", len(folded))
    if drop_dropout:
        param, removed = remove_dropout(param)
        log.info("removed %d Dropout layer(s)", len(removed))
    if check and (folded or removed):
        compare_outputs(net, build_with_blobs(param, str(output)), preprocess.input)

    param.frozen.CopyFrom(pb.FrozenModelInfo(
        format_version=FORMAT_VERSION, netforge_version=__version__,
        preprocessing=preprocess.to_proto(), batch_norm_folded=bool(folded),
        dropout_removed=bool(removed), source_model=str(model), source_weights=str(weights)))
    param.frozen.labels.extend(labels)
    atomic_write_bytes(output, param.SerializeToString())
    return param


def compare_outputs(reference: Net, rewritten: Net, input_name: str, batch: int = 1,
                    seed: int = 0) -> float:
    """Run both nets on one random batch; RunError unless every output agrees within float32
    tolerance. Returns the largest difference relative to the output's magnitude."""
    shape = (batch, *reference.blobs[input_name].shape[1:])
    x = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    worst = 0.0
    outs = []
    for net in (reference, rewritten):
        net.blobs[input_name].reshape(shape)
        net.reshape()
        outs.append({k: np.array(v) for k, v in net.forward(**{input_name: x}).items()})
    for name, expected in outs[0].items():
        got = outs[1].get(name)
        if got is None or got.shape != expected.shape:
            raise RunError(f'rewriting the graph changed output "{name}"; freeze without '
                           "--fold-bn/--drop-dropout")
        diff = float(np.abs(got - expected).max(initial=0.0))
        worst = max(worst, diff / max(float(np.abs(expected).max(initial=0.0)), 1e-6))
    if worst > 1e-3:
        raise RunError(f"the folded net's outputs differ from the original by {worst:.3g} "
                       "(relative); freeze without --fold-bn")
    log.info("rewritten net matches the original (largest relative difference %.3g)", worst)
    return worst


# -- graph rewrites --------------------------------------------------------------------------


def _consumers(layers) -> dict[tuple[str, int], list[int]]:
    """(blob name, index of the layer that produced this version) -> consuming layer indices.

    In-place layers give a blob name several versions; -1 is a version no layer produced.
    """
    current: dict[str, int] = {}
    consumers: dict[tuple[str, int], list[int]] = {}
    for i, layer in enumerate(layers):
        for name in layer.bottom:
            consumers.setdefault((name, current.get(name, -1)), []).append(i)
        for name in layer.top:
            current[name] = i
    return consumers


def _only_consumer(layers, consumers, i: int) -> int | None:
    """The index of the single layer reading layer i's (single) top, else None."""
    if len(layers[i].top) != 1:
        return None
    readers = consumers.get((layers[i].top[0], i), [])
    return readers[0] if len(readers) == 1 else None


def fold_batch_norm(param: pb.NetParameter) -> tuple[pb.NetParameter, list[str]]:
    """Fold every Convolution → BatchNorm (→ Scale) chain into the convolution.

    A chain folds when each layer is the only reader of the one before, BatchNorm uses its
    stored statistics, and the Scale has a learned per-channel factor. Returns the new
    NetParameter (layers with blobs) and the names of the BatchNorm layers folded.
    """
    work = pb.NetParameter()
    work.CopyFrom(param)  # rewritten in place below; the caller's stays as it was
    layers = list(work.layer)
    consumers = _consumers(layers)
    drop: set[int] = set()
    folded: list[str] = []
    for i, conv in enumerate(layers):
        if conv.type != "Convolution" or len(conv.bottom) != 1 or any(s.name for s in conv.param):
            continue
        j = _only_consumer(layers, consumers, i)
        if j is None or layers[j].type != "BatchNorm" or len(layers[j].bottom) != 1:
            continue
        bn = layers[j]
        if bn.batch_norm_param.HasField("use_global_stats") and not (
                bn.batch_norm_param.use_global_stats):
            log.warning('BatchNorm "%s" uses batch statistics at TEST; not folded', bn.name)
            continue
        k = _only_consumer(layers, consumers, j)
        scale = layers[k] if k is not None and _foldable_scale(layers[k]) else None
        _fold_one(conv, bn, scale)
        conv.top[0] = (scale or bn).top[0]  # downstream layers read the chain's last top
        drop.update({j} | ({k} if scale is not None else set()))
        folded.append(bn.name)
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    del work.layer[:]
    work.layer.extend(kept)
    return work, folded


def _foldable_scale(layer: pb.LayerParameter) -> bool:
    p = layer.scale_param
    return (layer.type == "Scale" and len(layer.bottom) == 1 and p.axis in (1, -3)
            and p.num_axes == 1 and len(layer.blobs) >= 1 and len(layer.blobs[0].shape.dim) == 1)


def _fold_one(conv: pb.LayerParameter, bn: pb.LayerParameter, scale) -> None:
    """Rewrite ``conv``'s blobs (in float64) to include ``bn`` and ``scale``."""
    w = blobproto_to_array(conv.blobs[0], dtype=np.float64)
    out_channels = w.shape[0]
    b = (blobproto_to_array(conv.blobs[1], dtype=np.float64)
         if conv.convolution_param.bias_term and len(conv.blobs) > 1
         else np.zeros(out_channels))
    mean_sum, var_sum, factor = (blobproto_to_array(blob, dtype=np.float64).ravel()
                                 for blob in bn.blobs[:3])
    # Caffe: statistics are accumulated sums; a zero factor means "no statistics" (zeros).
    norm = 0.0 if factor[0] == 0 else 1.0 / factor[0]
    mean, var = mean_sum * norm, var_sum * norm
    if mean.shape != (out_channels,):
        raise ShapeError(f'BatchNorm "{bn.name}" has {mean.size} channels but convolution '
                         f'"{conv.name}" gives {out_channels}')
    gamma = np.ones(out_channels)
    beta = np.zeros(out_channels)
    if scale is not None:
        gamma = blobproto_to_array(scale.blobs[0], dtype=np.float64).ravel()
        if scale.scale_param.bias_term and len(scale.blobs) > 1:
            beta = blobproto_to_array(scale.blobs[1], dtype=np.float64).ravel()
    factor_per_channel = gamma / np.sqrt(var + bn.batch_norm_param.eps)
    w = w * factor_per_channel.reshape(-1, *([1] * (w.ndim - 1)))
    b = (b - mean) * factor_per_channel + beta
    del conv.blobs[:]
    conv.blobs.add().CopyFrom(array_to_blobproto(w.astype(np.float32)))
    conv.blobs.add().CopyFrom(array_to_blobproto(b.astype(np.float32)))
    conv.convolution_param.bias_term = True


def remove_dropout(param: pb.NetParameter) -> tuple[pb.NetParameter, list[str]]:
    """Drop Dropout layers (the identity at TEST). An in-place one simply goes; one with its
    own top is removed when its readers can read its bottom instead (the bottom is not
    rewritten in between, the top is not rewritten in place, and it is not a net output).
    Returns the new NetParameter and the names removed."""
    work = pb.NetParameter()
    work.CopyFrom(param)
    layers = list(work.layer)
    removed: list[str] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if layer.type != "Dropout" or len(layer.bottom) != 1 or len(layer.top) != 1:
            i += 1
            continue
        bottom, top = layer.bottom[0], layer.top[0]
        if bottom != top:
            readers = _consumers(layers).get((top, i), [])
            last_reader = max(readers, default=i)
            bottom_rewritten = any(bottom in layers[m].top for m in range(i + 1, last_reader))
            top_rewritten = any(top in layers[m].top for m in range(i + 1, len(layers)))
            if not readers or bottom_rewritten or top_rewritten:
                log.info('Dropout "%s" kept: its top cannot be rewired safely', layer.name)
                i += 1
                continue
            for r in readers:
                names = [bottom if name == top else name for name in layers[r].bottom]
                del layers[r].bottom[:]
                layers[r].bottom.extend(names)
        removed.append(layer.name)
        del layers[i]
    kept = list(layers)
    del work.layer[:]
    work.layer.extend(kept)
    return work, removed

"""Deploy preprocessing taken from the train_val net's ``transform_param``, so a frozen
model sees images as the test net saw them.

Caffe's DataTransformer at TEST time: the stored image (its size is the database's), minus
the mean (mean_file, at the stored size, or mean_value), centre-cropped to crop_size, times
scale. The deploy equivalent (``Preprocess``): resize a photo to the stored size
(``image_dims``), subtract a mean image of that size before the crop, centre-crop to the net
input, scale. The stored size is read from the data layer's database (its first record) or
from ImageData's new_height/new_width; without either, from the mean image's size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.data.records import datum_to_array, load_mean_file, parse_datum
from netforge.deploy.preprocess import Preprocess
from netforge.errors import ConfigError, NetforgeError
from netforge.files import resolve_file

log = logging.getLogger("netforge")

_DATA_TYPES = ("Data", "ImageData", "MemoryData", "WindowData")


@dataclass
class TransformChoice:
    """What was read and from where: ``settings`` to freeze with, ``notes`` to tell the user."""

    settings: Preprocess
    notes: list[str]


def _data_layer(net: pb.NetParameter, input_name: str, where: str) -> pb.LayerParameter:
    candidates = [layer for layer in net.layer
                  if layer.type in _DATA_TYPES or layer.HasField("transform_param")]
    if not candidates:
        raise ConfigError(f"{where}: no data layer with a transform_param in its TEST phase")
    for layer in candidates:
        if input_name in layer.top:
            return layer
    return candidates[0]


def _stored_size(layer: pb.LayerParameter, base_dirs) -> tuple[tuple[int, int] | None, str]:
    """(H, W) of the images the layer reads, and where that came from."""
    if layer.type == "ImageData" and layer.image_data_param.new_height:
        p = layer.image_data_param
        return (p.new_height, p.new_width), "image_data_param new_height/new_width"
    if layer.type == "Data" and layer.data_param.source:
        source = resolve_file(layer.data_param.source, *base_dirs)
        if (source / "data.mdb").is_file():
            from netforge.data.stores import LmdbReader

            try:
                with LmdbReader(source) as reader:
                    for key, value in reader:
                        image, _ = datum_to_array(parse_datum(value, f"{source} {key!r}"))
                        return tuple(image.shape[1:]), f"the images stored in {source}"
            except NetforgeError as exc:
                log.warning("cannot read the image size from %s: %s", source, exc)
    return None, ""


def preprocess_from_train_val(path, input_name: str, input_hw: tuple[int, int]) -> TransformChoice:
    """Preprocessing for a deploy input (``input_name``, spatial ``input_hw``) from the TEST
    phase of the train_val net at ``path``."""
    where = str(path)
    param = config.filter_net(config.load_net_param(path), config.make_state("TEST"), where)
    layer = _data_layer(param, input_name, where)
    t = layer.transform_param
    base_dirs = (Path.cwd(), Path(path).resolve().parent)
    settings = Preprocess(input="", scale=t.scale)
    notes = [f'from {where} layer "{layer.name}" (TEST phase)']
    if t.mean_file:
        mean_path = resolve_file(t.mean_file, *base_dirs)
        settings.mean_image = load_mean_file(mean_path)
        notes.append(f"mean image {mean_path} "
                     f"({'×'.join(map(str, settings.mean_image.shape[1:]))})")
    elif len(t.mean_value):
        settings.mean_values = tuple(float(v) for v in t.mean_value)
        notes.append(f"mean values {', '.join(f'{v:g}' for v in settings.mean_values)}")
    else:
        notes.append("no mean")
    stored, origin = _stored_size(layer, base_dirs)
    if stored is None and settings.mean_image is not None:
        stored, origin = tuple(settings.mean_image.shape[1:]), "the mean image"
    if t.crop_size:
        if t.crop_size != input_hw[0] or t.crop_size != input_hw[1]:
            raise ConfigError(f"{where}: crop_size {t.crop_size} but the deploy input is "
                              f"{input_hw[0]}×{input_hw[1]}; they must agree")
        if stored is None:
            raise ConfigError(f"{where}: crop_size {t.crop_size} crops images of a size this "
                              "net does not say (its database cannot be read); give "
                              "--image-dims H W (the stored image size)")
        settings.image_dims = stored
        notes.append(f"resize to {stored[0]}×{stored[1]} ({origin}), centre crop "
                     f"{t.crop_size}×{t.crop_size}")
    elif stored is not None and tuple(stored) != tuple(input_hw):
        notes.append(f"resize to {input_hw[0]}×{input_hw[1]} (images were stored at "
                     f"{stored[0]}×{stored[1]}, fed uncropped)")
    else:
        notes.append(f"resize to {input_hw[0]}×{input_hw[1]}")
    notes.append(f"scale {t.scale:g}")
    if t.mirror:
        # Caffe flips at random in both phases; a deployed model answers deterministically.
        notes.append("mirror not applied (Caffe's test net flips half its images at random)")
    return TransformChoice(settings, notes)


def deploy_input(model) -> tuple[str, tuple[int, int]]:
    """(name, (h, w)) of the deploy net's first 4-D Input layer top."""
    param = config.filter_net(config.load_net_param(model), config.make_state("TEST"),
                              str(model))
    for layer in param.layer:
        if layer.type == "Input" and layer.input_param.shape:
            dims = list(layer.input_param.shape[0].dim)
            if len(dims) == 4:
                return layer.top[0], (int(dims[2]), int(dims[3]))
    raise ConfigError(f"{model}: no 4-D Input layer to feed images into")


def describe(settings: Preprocess) -> str:
    """One line: what a frozen model will do to an image (after ``bind``)."""
    channels, height, width = settings.input_chw
    dims = settings.dims
    steps = [f"{'colour ' + settings.channel_order if channels == 3 else 'grey'}"]
    if tuple(dims) != (height, width):
        steps.append(f"resize to {dims[0]}×{dims[1]}, centre crop {height}×{width}")
    else:
        steps.append(f"resize to {height}×{width}")
    steps.append(f"pixels 0..{settings.raw_scale:g}")
    if settings.mean_image is not None:
        size = "×".join(map(str, settings.mean_image.shape[1:]))
        steps.append(f"minus a {size} mean image" + (" (before the crop)"
                                                        if settings.mean_before_crop else ""))
    elif settings.mean_values:
        steps.append(f"minus {', '.join(f'{v:g}' for v in settings.mean_values)}")
    steps.append(f"times {settings.scale:g}")
    return f'input "{settings.input}": ' + ", ".join(steps)

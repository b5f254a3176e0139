"""How an image file becomes a net input for ``netforge predict`` (pycaffe's Classifier order).

For an input blob of shape (N, C, h, w):
  1. decode to floats: C = 3 -> colour, C = 1 -> grey (one channel), pixel values in [0, 1]
     scaled by ``raw_scale`` (default 255: Caffe nets see 0..255 pixels);
  2. resize to ``image_dims`` (default (h, w)) bilinearly;
  3. crop (h, w): the centre, or with ``oversample`` Caffe's ten crops (4 corners + centre,
     then the same mirrored);
  4. order the colour channels as the net expects (``bgr``, Caffe's default, or ``rgb``);
  5. subtract the mean (per-channel values, or a mean image of size image_dims or (h, w));
  6. multiply by ``scale`` (transform_param's scale, e.g. 0.00390625 for LeNet).
Steps 1-2 run before the crop so that a mean image at ``image_dims`` lines up with every
crop, as Caffe's mean_file lines up with its crop offset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from netforge import netforge_pb2 as pb
from netforge.data.image_list import load_image as load_chw
from netforge.data.image_list import resize_bilinear
from netforge.data.records import array_to_blobproto, blobproto_to_array, load_mean_file
from netforge.deploy.caffe_io import crop_boxes
from netforge.errors import ConfigError, ShapeError

CHANNEL_ORDERS = ("bgr", "rgb")
log = logging.getLogger("netforge")


@dataclass
class Preprocess:
    """Preprocessing settings for one 4-D input blob (see the module docstring)."""

    input: str = "data"
    channel_order: str = "bgr"
    raw_scale: float = 255.0
    mean_values: tuple[float, ...] = ()
    mean_image: np.ndarray | None = None  # (C, H, W)
    scale: float = 1.0
    image_dims: tuple[int, int] | None = None
    # Filled by ``bind``: the input blob's (C, h, w), and whether the mean image has the
    # size of the resized image (subtracted before cropping) rather than the input's.
    input_chw: tuple[int, int, int] = field(default=(0, 0, 0), repr=False)
    mean_before_crop: bool = field(default=False, repr=False)

    # -- the proto form (kept inside frozen models) ------------------------------------------
    def to_proto(self) -> pb.Preprocessing:
        msg = pb.Preprocessing(input=self.input, raw_scale=self.raw_scale, scale=self.scale,
                               channel_order=pb.Preprocessing.ChannelOrder.Value(
                                   self.channel_order.upper()))
        msg.mean_value.extend(self.mean_values)
        if self.mean_image is not None:
            msg.mean_image.CopyFrom(array_to_blobproto(self.mean_image))
        if self.image_dims:
            msg.image_dims.extend(self.image_dims)
        return msg

    @classmethod
    def from_proto(cls, msg: pb.Preprocessing) -> Preprocess:
        order = pb.Preprocessing.ChannelOrder.Name(msg.channel_order).lower()
        mean_image = (blobproto_to_array(msg.mean_image, where="frozen model mean image")
                      if msg.HasField("mean_image") else None)
        dims = tuple(int(d) for d in msg.image_dims)
        if dims and len(dims) != 2:
            raise ConfigError(f"image_dims needs (H, W), got {dims}")
        return cls(input=msg.input, channel_order=order, raw_scale=msg.raw_scale,
                   mean_values=tuple(msg.mean_value), mean_image=mean_image, scale=msg.scale,
                   image_dims=dims or None)

    # -- checking against a net --------------------------------------------------------------
    def bind(self, input_shape) -> Preprocess:
        """Check the settings against the input blob's shape (N, C, h, w); returns self."""
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise ShapeError(f'input "{self.input}" has shape {shape}; predicting images needs '
                             "a 4-D input with 1 (grey) or 3 (colour) channels")
        channels, height, width = shape[1:]
        self.input_chw = (channels, height, width)
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f'channel order must be bgr or rgb, got "{self.channel_order}"')
        if self.mean_values and self.mean_image is not None:
            raise ConfigError("give a mean file or mean values, not both")
        if len(self.mean_values) not in (0, 1, channels):
            raise ConfigError(f"{len(self.mean_values)} mean values for a {channels}-channel "
                              "input; give one value or one per channel")
        dims = self.image_dims or (height, width)
        if dims[0] < height or dims[1] < width:
            raise ConfigError(f"image dims {dims[0]}×{dims[1]} are smaller than the net input "
                              f"{height}×{width}; they must be at least the input size")
        if self.mean_image is not None:
            mean = np.asarray(self.mean_image, dtype=np.float32)
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3 or mean.shape[0] != channels:
                raise ShapeError(f"mean image of shape {mean.shape} does not fit a "
                                 f"{channels}-channel input")
            if mean.shape[1:] not in (tuple(dims), (height, width)):
                # pycaffe's Transformer resizes a mean of another size to the input; say so,
                # since Caffe itself would crop it (with the crop of a train_val net).
                log.warning("the mean image is %s but the input is %d×%d (and images are "
                            "resized to %d×%d): resizing the mean to the input; if the net "
                            "was trained with crop_size, give --image-dims H W (the stored "
                            "image size) or --transform-from TRAIN_VAL instead",
                            "×".join(map(str, mean.shape[1:])), height, width, *dims)
                mean = resize_bilinear(mean, height, width)
            self.mean_image = np.ascontiguousarray(mean)
            self.mean_before_crop = mean.shape[1:] != (height, width)
        return self

    @property
    def dims(self) -> tuple[int, int]:
        """The size images are resized to before cropping."""
        return tuple(self.image_dims) if self.image_dims else self.input_chw[1:]

    # -- images -> inputs --------------------------------------------------------------------
    def load(self, path) -> np.ndarray:
        """One image file -> float32 (C, H, W) at ``dims``, scaled, channels ordered, and the
        mean subtracted when the mean image has this size. Raises DataError when the file
        cannot be read."""
        channels = self.input_chw[0]
        chw = load_chw(path, color=channels == 3)  # uint8, BGR for colour
        if channels == 3 and self.channel_order == "rgb":
            chw = chw[::-1]
        image = chw.astype(np.float32)
        if self.raw_scale != 255.0:
            image *= np.float32(self.raw_scale / 255.0)
        height, width = self.dims
        if image.shape[1:] != (height, width):
            image = resize_bilinear(image, height, width)
        if self.mean_before_crop:
            image -= self.mean_image
        return image

    def crops_per_image(self, oversample: bool) -> int:
        return 10 if oversample else 1

    def fill(self, image: np.ndarray, out: np.ndarray, oversample: bool = False) -> None:
        """Write the crop(s) of one ``load``-ed image into ``out`` ((1 or 10), C, h, w)."""
        _, h, w = self.input_chw
        if oversample:
            boxes = crop_boxes(image.shape[1:], (h, w))
            for k, (top, left) in enumerate(boxes):
                out[k] = image[:, top:top + h, left:left + w]
            out[5:10] = out[0:5, :, :, ::-1]
        else:
            top, left = (image.shape[1] - h) // 2, (image.shape[2] - w) // 2
            out[0] = image[:, top:top + h, left:left + w]
        self._finish(out)

    def _finish(self, out: np.ndarray) -> None:
        """Mean (at the input size) and scale, in place on (k, C, h, w)."""
        if self.mean_image is not None and not self.mean_before_crop:
            out -= self.mean_image
        if self.mean_values:
            values = np.asarray(self.mean_values, dtype=np.float32)
            out -= values.reshape(-1, 1, 1) if values.size > 1 else values[0]
        if self.scale != 1.0:
            out *= np.float32(self.scale)


def with_options(base: Preprocess | None = None, *, mean_file=None, mean_values=(),
                 scale=None, raw_scale=None, channel_order=None, image_dims=None,
                 input_name=None) -> Preprocess:
    """``base`` (or the defaults) with the options that were given (not None/empty) applied:
    the command line's ``--mean-file``, ``--mean-value``, ``--scale`` and so on."""
    settings = replace(base) if base is not None else Preprocess(input="")
    if mean_file and mean_values:
        raise ConfigError("give --mean-file or --mean-value, not both")
    if mean_file:
        settings.mean_image, settings.mean_values = load_mean_file(mean_file), ()
    if mean_values:
        settings.mean_values, settings.mean_image = tuple(float(v) for v in mean_values), None
    if scale is not None:
        settings.scale = float(scale)
    if raw_scale is not None:
        settings.raw_scale = float(raw_scale)
    if channel_order is not None:
        settings.channel_order = channel_order.lower()
    if image_dims:
        settings.image_dims = tuple(int(d) for d in image_dims)
        if len(settings.image_dims) != 2 or min(settings.image_dims) <= 0:
            raise ConfigError(f"image dims need a positive height and width, got {image_dims}")
    if input_name:
        settings.input = input_name
    return settings

"""pycaffe's ``caffe.io``: images as float (H, W, K) arrays, the Transformer that makes net
inputs of them, and the BlobProto / Datum <-> array conversions.

    transformer = netforge.io.Transformer({"data": net.blobs["data"].shape})
    transformer.set_transpose("data", (2, 0, 1))      # H×W×K -> K×H×W
    transformer.set_channel_swap("data", (2, 1, 0))  # RGB -> BGR
    transformer.set_raw_scale("data", 255)           # [0, 1] -> [0, 255]
    transformer.set_mean("data", np.array([104, 117, 123]))
    net.blobs["data"].data[0] = transformer.preprocess("data", netforge.io.load_image(path))

Images here follow pycaffe's conventions (RGB, floats in [0, 1], channels last), unlike the
data pipeline's (C, H, W) BGR uint8; ``netforge.data.records`` does the protobuf work.
"""

from __future__ import annotations

import numpy as np

from netforge import netforge_pb2 as pb
from netforge.data import records
from netforge.data.image_list import load_image as _load_chw
from netforge.data.image_list import resize_bilinear
from netforge.errors import ConfigError, ShapeError

# -- images ----------------------------------------------------------------------------------


def load_image(filename, color: bool = True) -> np.ndarray:
    """An image file as float32 (H, W, 3) RGB in [0, 1], or (H, W, 1) grey with
    ``color=False`` (pycaffe's ``caffe.io.load_image``).

    A grey file loaded in colour repeats its channel; alpha is dropped. Grey conversion uses
    ITU-R 601 luma (Pillow's, OpenCV's), where pycaffe's scikit-image used Rec. 709 weights.
    Raises DataError for a missing or undecodable file.
    """
    chw = _load_chw(filename, color=bool(color))  # (C, H, W) uint8, BGR when colour
    if color:
        chw = chw[::-1]  # BGR -> RGB
    return np.ascontiguousarray(chw.transpose(1, 2, 0), dtype=np.float32) / np.float32(255)


def resize_image(im: np.ndarray, new_dims, interp_order: int = 1) -> np.ndarray:
    """Resize (H, W, K) ``im`` to ``new_dims`` = (h, w): bilinear (``interp_order`` 1, with
    half-pixel centres as OpenCV and scikit-image use) or nearest (0). Returns float32."""
    im = np.asarray(im)
    if im.ndim != 3:
        raise ShapeError(f"resize_image takes an (H, W, K) image, got shape {im.shape}")
    height, width = (int(d) for d in new_dims)
    if (height, width) == im.shape[:2]:
        return im.astype(np.float32)
    chw = np.ascontiguousarray(im.transpose(2, 0, 1), dtype=np.float32)
    if interp_order == 0:
        rows = _nearest_indices(im.shape[0], height)
        cols = _nearest_indices(im.shape[1], width)
        out = chw[:, rows][:, :, cols]
    elif interp_order == 1:
        out = resize_bilinear(chw, height, width)
    else:
        raise ConfigError(f"interp_order must be 0 (nearest) or 1 (bilinear), got {interp_order}")
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _nearest_indices(src: int, dst: int) -> np.ndarray:
    centres = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst)
    return np.minimum(np.floor(centres).astype(np.int64), src - 1)


def crop_boxes(image_dims, crop_dims) -> list[tuple[int, int]]:
    """Top-left corners of Caffe's five crops of ``crop_dims`` in an image of ``image_dims``:
    the four corners, then the centre (pycaffe's rounding: centre - crop/2, truncated)."""
    (height, width), (ch, cw) = (tuple(int(d) for d in image_dims),
                                 tuple(int(d) for d in crop_dims))
    if ch > height or cw > width:
        raise ShapeError(f"crop {ch}×{cw} is larger than the image {height}×{width}")
    corners = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw)]
    return [*corners, center_offset(image_dims, crop_dims)]


def center_offset(image_dims, crop_dims) -> tuple[int, int]:
    """Top-left corner of the centre crop (pycaffe's ``int(H/2 - h/2)``)."""
    return (int(image_dims[0] / 2.0 - crop_dims[0] / 2.0),
            int(image_dims[1] / 2.0 - crop_dims[1] / 2.0))


def oversample(images, crop_dims) -> np.ndarray:
    """Caffe's 10 crops of each (H, W, K) image: the four corners and the centre, then the
    same five mirrored left-right. Returns (10·N, h, w, K) float32, image by image."""
    images = list(images)
    if not images:
        return np.empty((0, *(int(d) for d in crop_dims), 0), np.float32)
    ch, cw = (int(d) for d in crop_dims)
    first = np.asarray(images[0])
    crops = np.empty((10 * len(images), ch, cw, first.shape[-1]), dtype=np.float32)
    boxes = crop_boxes(first.shape[:2], crop_dims)
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.shape != first.shape:
            raise ShapeError(f"oversample needs images of one size: image {i} has shape "
                             f"{image.shape}, image 0 {first.shape}")
        base = 10 * i
        for k, (top, left) in enumerate(boxes):
            crops[base + k] = image[top:top + ch, left:left + cw]
        crops[base + 5:base + 10] = crops[base:base + 5, :, ::-1]
    return crops


# -- the Transformer -------------------------------------------------------------------------


class Transformer:
    """pycaffe's ``caffe.io.Transformer``: per input blob, the steps that turn an (H, W, K)
    image into a (K, H, W) net input. ``preprocess`` applies, in order: resize to the
    input's H×W (when it differs), transpose, channel swap, raw_scale, minus mean,
    input_scale; ``deprocess`` undoes them (except the resize).

    Args:
        inputs: input blob name -> its shape (N, K, H, W), e.g. ``{"data": net.blobs["data"]
            .shape}``.
    """

    def __init__(self, inputs: dict):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: dict = {}
        self.channel_swap: dict = {}
        self.raw_scale: dict = {}
        self.mean: dict = {}
        self.input_scale: dict = {}

    def _check_input(self, name: str) -> tuple[int, ...]:
        if name not in self.inputs:
            raise ConfigError(f'"{name}" is not one of the transformer\'s inputs '
                              f"{sorted(self.inputs)}")
        return self.inputs[name]

    def set_transpose(self, in_: str, order) -> None:
        """Axis order taking the image to (K, H, W), e.g. (2, 0, 1) for (H, W, K)."""
        shape = self._check_input(in_)
        order = tuple(int(a) for a in order)
        if len(order) != len(shape) - 1:
            raise ShapeError(f'transpose order {order} has {len(order)} axes but input "{in_}" '
                             f"images have {len(shape) - 1}")
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order) -> None:
        """Channel order after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        shape = self._check_input(in_)
        order = tuple(int(a) for a in order)
        if len(order) != shape[1]:
            raise ShapeError(f'channel swap {order} has {len(order)} entries but input "{in_}" '
                             f"has {shape[1]} channels")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Factor applied before the mean, e.g. 255 for images loaded in [0, 1]."""
        self._check_input(in_)
        self.raw_scale[in_] = float(scale)

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Factor applied after the mean (Caffe's transform_param ``scale``)."""
        self._check_input(in_)
        self.input_scale[in_] = float(scale)

    def set_mean(self, in_: str, mean) -> None:
        """A per-channel mean (K,) or a mean image (K, H, W), in the net's channel order;
        a mean image of another H×W is resized to the input's."""
        shape = self._check_input(in_)
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise ShapeError(f'mean has {mean.shape[0]} channels but input "{in_}" has '
                                 f"{shape[1]}")
            mean = mean[:, None, None]
        else:
            if mean.ndim == 2:
                mean = mean[None]
            if mean.ndim != 3 or mean.shape[0] != shape[1]:
                raise ShapeError(f'mean of shape {mean.shape} does not fit input "{in_}" of '
                                 f"shape {shape}")
            if mean.shape[1:] != shape[2:]:
                mean = resize_image(mean.transpose(1, 2, 0), shape[2:]).transpose(2, 0, 1)
        self.mean[in_] = np.ascontiguousarray(mean)

    def preprocess(self, in_: str, data) -> np.ndarray:
        """An (H, W, K) image (any size) -> a float32 (K, H, W) input for blob ``in_``."""
        shape = self._check_input(in_)
        image = np.asarray(data, dtype=np.float32)
        transpose = self.transpose.get(in_)
        in_dims = shape[2:]
        spatial = image.shape[:2] if transpose is not None else image.shape[1:]
        if tuple(spatial) != in_dims:
            if transpose is None:  # already (K, H, W): resize in that layout
                image = resize_image(image.transpose(1, 2, 0), in_dims).transpose(2, 0, 1)
            else:
                image = resize_image(image, in_dims)
        if transpose is not None:
            image = image.transpose(transpose)
        swap = self.channel_swap.get(in_)
        if swap is not None:
            image = image[list(swap)]
        out = np.array(image, dtype=np.float32)  # a fresh array: the caller's stays intact
        if in_ in self.raw_scale:
            out *= np.float32(self.raw_scale[in_])
        if in_ in self.mean:
            out -= self.mean[in_]
        if in_ in self.input_scale:
            out *= np.float32(self.input_scale[in_])
        return out

    def deprocess(self, in_: str, data) -> np.ndarray:
        """Undo ``preprocess`` for a (K, H, W) input (a leading batch axis of 1 is dropped)."""
        self._check_input(in_)
        image = np.array(data, dtype=np.float32).squeeze()
        if image.ndim == 2:
            image = image[None]
        if in_ in self.input_scale:
            image /= np.float32(self.input_scale[in_])
        if in_ in self.mean:
            image += self.mean[in_]
        if in_ in self.raw_scale:
            image /= np.float32(self.raw_scale[in_])
        swap = self.channel_swap.get(in_)
        if swap is not None:
            image = image[list(np.argsort(swap))]
        transpose = self.transpose.get(in_)
        if transpose is not None:
            image = image.transpose(tuple(np.argsort(transpose)))
        return image


# -- protobuf conversions --------------------------------------------------------------------


def blobproto_to_array(blob: pb.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The blob's data (or diff) as a float32 array of its shape (legacy blobs are 4-D)."""
    return records.blobproto_to_array(blob, diff=return_diff)


def array_to_blobproto(arr, diff=None) -> pb.BlobProto:
    """A BlobProto of ``arr``'s shape and values (and ``diff``, when given)."""
    return records.array_to_blobproto(arr, diff)


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """Serialized BlobProtoVector of the arrays."""
    vector = pb.BlobProtoVector()
    for array in arraylist:
        vector.blobs.add().CopyFrom(array_to_blobproto(array))
    return vector.SerializeToString()


def blobprotovector_str_to_arraylist(text: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vector = pb.BlobProtoVector()
    vector.ParseFromString(text)
    return [blobproto_to_array(blob) for blob in vector.blobs]


def array_to_datum(arr, label: int | None = None) -> pb.Datum:
    """A Datum of a (C, H, W) array: uint8 pixels go to ``data``, others to ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ShapeError(f"a Datum holds a (C, H, W) array, got shape {arr.shape}")
    return records.array_to_datum(arr, 0 if label is None else int(label))


def datum_to_array(datum: pb.Datum) -> np.ndarray:
    """The (C, H, W) array of a Datum (uint8 from ``data``, float32 from ``float_data``;
    an encoded Datum is decoded to BGR). The label is ``datum.label``."""
    array, _ = records.datum_to_array(datum)
    return np.array(array)  # writable, as pycaffe's

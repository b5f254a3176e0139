"""Datum and BlobProto <-> numpy arrays, and mean files.

A ``Datum`` holds one image: uint8 pixels in (C, H, W) order, BGR for colour (``data``), or
float pixels (``float_data``, used when ``data`` is empty), or the compressed image file
(``encoded: true``). A ``BlobProto`` holds an N-D float array; old files use the legacy 4-D
``num/channels/height/width`` fields instead of ``shape``.
"""

from __future__ import annotations

import io
import struct
from math import prod
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from netforge import netforge_pb2 as pb
from netforge.errors import DataError
from netforge.files import atomic_write_bytes


# -- Datum ---------------------------------------------------------------------------------------
def array_to_datum(array, label: int = 0, *, encoded_bytes: bytes | None = None) -> pb.Datum:
    """A Datum from a (C, H, W) array (uint8 -> ``data`` bytes, other dtypes -> ``float_data``).

    With ``encoded_bytes`` the Datum stores those compressed image bytes (``encoded: true``);
    ``array`` may then be None, or the decoded (C, H, W) image whose size is recorded.
    """
    datum = pb.Datum(label=int(label))
    if encoded_bytes is not None:
        datum.data = bytes(encoded_bytes)
        datum.encoded = True
        if array is not None:
            c, h, w = _chw(np.asarray(array).shape)
            datum.channels, datum.height, datum.width = c, h, w
        return datum
    array = np.asarray(array)
    datum.channels, datum.height, datum.width = _chw(array.shape)
    if array.dtype == np.uint8:
        datum.data = np.ascontiguousarray(array).tobytes()
    else:
        datum.float_data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    return datum


def _chw(shape) -> tuple[int, int, int]:
    if len(shape) == 2:
        return 1, int(shape[0]), int(shape[1])
    if len(shape) != 3:
        raise DataError(f"a Datum holds a (C, H, W) image, got an array of shape {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def datum_to_array(
    datum: pb.Datum, *, force_color: bool = False, force_gray: bool = False
) -> tuple[np.ndarray, int]:
    """``(array (C, H, W), label)``: uint8 from ``data``, float32 from ``float_data``.

    Encoded Datums are decoded to BGR (C, H, W) uint8; a grayscale image stays 1 channel unless
    ``force_color`` (3 channels) — ``force_gray`` makes every image 1 channel. A uint8 array
    from ``data`` is a read-only view of the Datum's bytes (no copy).
    """
    if datum.encoded:
        color = True if force_color else (False if force_gray else None)
        return decode_image_bytes(datum.data, color=color), int(datum.label)
    shape = (int(datum.channels), int(datum.height), int(datum.width))
    if min(shape) <= 0:
        raise DataError(f"Datum has an empty or negative size {shape} (damaged database?)")
    count = prod(shape)
    if datum.data:
        if len(datum.data) != count:
            raise DataError(
                f"Datum holds {len(datum.data)} bytes but its size {shape} needs {count}"
            )
        array = np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    else:
        if len(datum.float_data) != count:
            raise DataError(
                f"Datum holds {len(datum.float_data)} floats but its size {shape} needs {count}"
            )
        array = np.asarray(datum.float_data, dtype=np.float32).reshape(shape)
    if force_color and array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    elif force_gray and array.shape[0] == 3:
        array = _bgr_to_gray(array)
    return array, int(datum.label)


def parse_datum(value: bytes, where: str = "record") -> pb.Datum:
    """A Datum from serialized bytes; DataError naming ``where`` when they do not parse."""
    datum = pb.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError as exc:
        raise DataError(f"{where} is not a valid Datum (damaged database?): {exc}") from None
    return datum


def _bgr_to_gray(bgr: np.ndarray) -> np.ndarray:
    # ITU-R 601 luma, the weights OpenCV's and Pillow's gray conversions use.
    b, g, r = (bgr[i].astype(np.float32) for i in range(3))
    gray = 0.114 * b + 0.587 * g + 0.299 * r
    if bgr.dtype == np.uint8:
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[None]
    return gray.astype(bgr.dtype)[None]


# Pillow's own warning threshold (about 89 megapixels: a 9,450-pixel square); beyond it a
# header alone could make the decoder allocate gigabytes for a file of a few bytes.
MAX_IMAGE_PIXELS = 89_478_485


def decode_image_bytes(data: bytes, *, color: bool | None = None, where: str = "image"):
    """Compressed image bytes -> (C, H, W) uint8, BGR for colour.

    ``color``: True -> 3 channels, False -> 1 channel, None -> as stored (gray stays gray).
    EXIF orientation is ignored: pixels come out as stored in the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:  # known from the header, before decoding
                raise DataError(f"{where}: cannot decode image: its header claims {width}×"
                                f"{height} pixels, more than the {MAX_IMAGE_PIXELS} allowed "
                                "(a damaged or hostile file?)")
            img.load()
            return pil_to_chw(img, color=color)
    except UnidentifiedImageError:
        # Pillow's own text names its in-memory stream (<_io.BytesIO object at 0x...>).
        raise DataError(f"{where}: cannot decode image: not an image format Pillow "
                        f"reads ({len(data)} bytes)") from None
    except Image.DecompressionBombError as exc:  # a header claiming a gigantic size
        raise DataError(f"{where}: cannot decode image: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise DataError(f"{where}: cannot decode image: {exc or type(exc).__name__}") from None


_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def pil_to_chw(img, *, color: bool | None = None) -> np.ndarray:
    """A Pillow image -> (C, H, W) uint8 (BGR when colour, 1 channel when gray)."""
    if color is None:
        color = img.mode not in _GRAY_MODES
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit gray: keep the high byte, as an 8-bit decode would.
        arr16 = np.asarray(img, dtype=np.uint32)
        gray = (arr16 >> 8 if arr16.max(initial=0) > 255 else arr16).astype(np.uint8)
        if not color:
            return np.ascontiguousarray(gray[None])
        return np.ascontiguousarray(np.broadcast_to(gray, (3, *gray.shape)))
    if not color:
        arr = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.ascontiguousarray(arr[None])
    if img.mode != "RGB":
        img = img.convert("RGB")  # drops alpha without compositing, as OpenCV does
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1))


def encode_image(chw: np.ndarray, encode_type: str = "png") -> bytes:
    """(C, H, W) uint8 (BGR or gray) -> compressed bytes (png, or jpg at quality 95)."""
    from PIL import Image

    kind = encode_type.lower().lstrip(".")
    if kind in ("jpg", "jpeg"):
        fmt, options = "JPEG", {"quality": 95}
    elif kind == "png":
        fmt, options = "PNG", {}
    elif kind in ("bmp", "tif", "tiff", "webp"):
        fmt = {"bmp": "BMP", "tif": "TIFF", "tiff": "TIFF", "webp": "WEBP"}[kind]
        options = {"lossless": True} if kind == "webp" else {}
    else:
        raise DataError(f'unknown encode type "{encode_type}"; use png or jpg')
    chw = np.asarray(chw, dtype=np.uint8)
    if chw.shape[0] == 1:
        img = Image.fromarray(np.ascontiguousarray(chw[0]), mode="L")
    else:
        img = Image.fromarray(np.ascontiguousarray(chw[2::-1].transpose(1, 2, 0)), mode="RGB")
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# -- BlobProto -----------------------------------------------------------------------------------
_LEGACY = ("num", "channels", "height", "width")


def blobproto_shape(blob: pb.BlobProto) -> tuple[int, ...]:
    """The blob's shape: legacy 4-D when any legacy dim is set, else ``shape.dim``."""
    if any(blob.HasField(name) for name in _LEGACY):
        return tuple(int(getattr(blob, name)) for name in _LEGACY)
    return tuple(int(d) for d in blob.shape.dim)


def blobproto_to_array(
    blob: pb.BlobProto, *, diff: bool = False, dtype=np.float32, where: str = "BlobProto"
) -> np.ndarray:
    """The blob's data (or diff) as an array of its shape; ``double_*`` wins when non-empty."""
    shape = blobproto_shape(blob)
    if shape and min(shape) < 0:
        raise DataError(f"{where}: negative dimension in shape {shape} (damaged file?)")
    doubles = blob.double_diff if diff else blob.double_data
    floats = blob.diff if diff else blob.data
    values = doubles if len(doubles) else floats
    count = prod(shape)
    if len(values) != count:
        raise DataError(
            f"{where}: shape {shape} needs {count} values but the file holds {len(values)}"
        )
    src_dtype = np.float64 if len(doubles) else np.float32
    return np.asarray(values, dtype=src_dtype).reshape(shape).astype(dtype, copy=False)


def array_to_blobproto(array, diff=None) -> pb.BlobProto:
    """A BlobProto with ``shape`` and float ``data`` (and ``diff`` when given)."""
    array = np.asarray(array)
    blob = pb.BlobProto()
    blob.shape.dim.extend(int(d) for d in array.shape)
    blob.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    return blob


# -- mean files ----------------------------------------------------------------------------------
def load_mean_file(path) -> np.ndarray:
    """A mean image (C, H, W) float32 from a ``.binaryproto`` (1×C×H×W BlobProto) or ``.npy``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mean file {path} does not exist")
    if path.suffix == ".npy":
        try:
            array = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(
                f"mean file {path} is damaged or not a numeric .npy array: {exc}"
            ) from None
    else:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"mean file {path} cannot be read: {exc}") from None
        blob = pb.BlobProto()
        try:
            blob.ParseFromString(raw)
        except DecodeError:
            raise DataError(f"mean file {path} is damaged or not a binary BlobProto") from None
        if not raw or (not len(blob.data) and not len(blob.double_data)):
            raise DataError(f"mean file {path} holds no data (damaged or not a BlobProto)")
        array = blobproto_to_array(blob, where=f"mean file {path}")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or 0 in array.shape:
        raise DataError(
            f"mean file {path} has shape {tuple(array.shape)}; expected 1×C×H×W or C×H×W"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def save_mean_file(path, mean) -> None:
    """Write a mean image ((C, H, W) or (1, C, H, W)) as a 1×C×H×W BlobProto, atomically."""
    mean = np.asarray(mean, dtype=np.float32)
    if mean.ndim == 3:
        mean = mean[None]
    atomic_write_bytes(path, array_to_blobproto(mean).SerializeToString())

"""Datum and BlobProto codecs, mean files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from netforge import netforge_pb2 as pb
from netforge.data.records import (
    array_to_blobproto,
    array_to_datum,
    blobproto_to_array,
    datum_to_array,
    load_mean_file,
    save_mean_file,
)
from netforge.errors import DataError


def _png_bytes(hwc: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(hwc, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_datum_round_trip_uint8():
    chw = np.random.default_rng(0).integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    datum = array_to_datum(chw, 7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == chw.tobytes() and not datum.encoded
    back, label = datum_to_array(pb.Datum.FromString(datum.SerializeToString()))
    assert label == 7 and back.dtype == np.uint8
    np.testing.assert_array_equal(back, chw)


def test_datum_round_trip_float():
    chw = np.random.default_rng(1).normal(size=(2, 3, 3)).astype(np.float32)
    datum = array_to_datum(chw, 1)
    assert not datum.data and len(datum.float_data) == chw.size
    back, label = datum_to_array(datum)
    assert back.dtype == np.float32 and label == 1
    np.testing.assert_array_equal(back, chw)


def test_datum_size_mismatch_is_a_data_error():
    datum = pb.Datum(channels=1, height=2, width=2, data=b"abc")
    with pytest.raises(DataError, match="3 bytes"):
        datum_to_array(datum)


def test_encoded_datum_decodes_to_bgr_and_gray_stays_gray():
    rgb = np.random.default_rng(2).integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    datum = array_to_datum(None, 3, encoded_bytes=_png_bytes(rgb, "RGB"))
    assert datum.encoded
    chw, label = datum_to_array(datum)
    assert label == 3
    np.testing.assert_array_equal(chw, rgb[:, :, ::-1].transpose(2, 0, 1))

    gray = rgb[:, :, 0].copy()
    datum = array_to_datum(None, 0, encoded_bytes=_png_bytes(gray, "L"))
    chw, _ = datum_to_array(datum)
    assert chw.shape == (1, 4, 6)
    np.testing.assert_array_equal(chw[0], gray)
    colour, _ = datum_to_array(datum, force_color=True)
    assert colour.shape == (3, 4, 6)
    np.testing.assert_array_equal(colour[1], gray)


def test_blobproto_shape_and_data():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    blob = array_to_blobproto(array)
    assert list(blob.shape.dim) == [2, 3, 4] and not blob.HasField("num")
    np.testing.assert_array_equal(blobproto_to_array(pb.BlobProto.FromString(
        blob.SerializeToString())), array)


def test_blobproto_legacy_dims_and_double_data():
    blob = pb.BlobProto(num=1, channels=1, height=2, width=3)
    blob.double_data.extend([0.5, 1, 2, 3, 4, 5.25])
    blob.data.extend([9.0] * 6)  # ignored: double_data wins when non-empty
    array = blobproto_to_array(blob)
    assert array.shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(array.ravel(), [0.5, 1, 2, 3, 4, 5.25])


def test_blobproto_count_mismatch():
    blob = pb.BlobProto()
    blob.shape.dim.extend([2, 2])
    blob.data.extend([1.0, 2.0])
    with pytest.raises(DataError, match="needs 4 values"):
        blobproto_to_array(blob)


def test_load_mean_file(tmp_path):
    mean = np.random.default_rng(3).uniform(0, 255, size=(3, 5, 4)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    save_mean_file(path, mean)
    blob = pb.BlobProto.FromString(path.read_bytes())
    assert list(blob.shape.dim) == [1, 3, 5, 4]
    np.testing.assert_array_equal(load_mean_file(path), mean)

    legacy = pb.BlobProto(num=1, channels=3, height=5, width=4)
    legacy.data.extend(mean.ravel().tolist())
    (tmp_path / "legacy.binaryproto").write_bytes(legacy.SerializeToString())
    np.testing.assert_array_equal(load_mean_file(tmp_path / "legacy.binaryproto"), mean)

    np.save(tmp_path / "mean.npy", mean)
    np.testing.assert_array_equal(load_mean_file(tmp_path / "mean.npy"), mean)


def test_load_mean_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mean_file(tmp_path / "nope.binaryproto")
    bad = tmp_path / "bad.binaryproto"
    bad.write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(DataError, match="bad.binaryproto"):
        load_mean_file(bad)
    empty = tmp_path / "empty.binaryproto"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="no data"):
        load_mean_file(empty)
    flat = tmp_path / "flat.binaryproto"
    flat.write_bytes(array_to_blobproto(np.zeros((2, 6), np.float32)).SerializeToString())
    with pytest.raises(DataError, match=r"shape \(2, 6\)"):
        load_mean_file(flat)

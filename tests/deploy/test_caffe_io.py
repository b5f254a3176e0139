"""netforge.io (pycaffe's caffe.io): images, the Transformer, 10-crop oversampling and the
BlobProto / Datum conversions, each against values computed by hand here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from netforge import io
from netforge import netforge_pb2 as pb
from netforge.errors import DataError, ShapeError


def test_load_image_colour_is_rgb_in_unit_range(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = (255, 0, 0)  # red
    pixels[1, 2] = (0, 51, 102)
    Image.fromarray(pixels).save(tmp_path / "c.png")
    image = io.load_image(tmp_path / "c.png")
    assert image.shape == (2, 3, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(image[1, 2], [0.0, 0.2, 0.4], atol=1e-7)


def test_load_image_grey_and_colour_flag(tmp_path):
    grey = np.array([[0, 255], [51, 102]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    as_grey = io.load_image(tmp_path / "g.png", color=False)
    assert as_grey.shape == (2, 2, 1)
    np.testing.assert_allclose(as_grey[..., 0], grey / 255.0, atol=1e-7)
    as_colour = io.load_image(tmp_path / "g.png", color=True)
    assert as_colour.shape == (2, 2, 3)
    np.testing.assert_allclose(as_colour, np.repeat(grey[..., None] / 255.0, 3, axis=2),
                               atol=1e-7)


def test_load_image_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such image"):
        io.load_image(tmp_path / "nope.png")


def test_resize_nearest_and_bilinear_by_hand():
    im = np.arange(4, dtype=np.float32).reshape(2, 2, 1)  # [[0, 1], [2, 3]]
    nearest = io.resize_image(im, (4, 4), interp_order=0)
    np.testing.assert_array_equal(nearest[..., 0], [[0, 0, 1, 1], [0, 0, 1, 1],
                                                    [2, 2, 3, 3], [2, 2, 3, 3]])
    # Bilinear with half-pixel centres: output x maps to (x + 0.5)/2 - 0.5 = -0.25, 0.25,
    # 0.75, 1.25, clamped at the borders; weights 0, .25, .75, 1 of the second pixel.
    row = np.array([0.0, 0.25, 0.75, 1.0])
    expected = 2 * row[:, None] + row[None, :]
    np.testing.assert_allclose(io.resize_image(im, (4, 4))[..., 0], expected, atol=1e-6)
    assert io.resize_image(im, (2, 2)).dtype == np.float32


def test_oversample_gives_corners_centre_and_mirrors():
    image = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2)
    crops = io.oversample([image, image + 1000], (3, 4))
    assert crops.shape == (20, 3, 4, 2)
    # pycaffe's centre: int(5/2 - 3/2) = 1, int(6/2 - 4/2) = 1.
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for k, (top, left) in enumerate(corners):
        np.testing.assert_array_equal(crops[k], image[top:top + 3, left:left + 4])
        np.testing.assert_array_equal(crops[5 + k], image[top:top + 3, left:left + 4][:, ::-1])
        np.testing.assert_array_equal(crops[10 + k], image[top:top + 3, left:left + 4] + 1000)


def _transformer():
    t = io.Transformer({"data": (1, 3, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_transformer_preprocess_by_hand():
    rng = np.random.default_rng(0)
    image = rng.random((2, 2, 3)).astype(np.float32)
    out = _transformer().preprocess("data", image)
    assert out.shape == (3, 2, 2)
    for c, source in enumerate((2, 1, 0)):  # BGR from RGB
        expected = (image[:, :, source] * 255.0 - (10.0, 20.0, 30.0)[c]) * 0.5
        np.testing.assert_allclose(out[c], expected, rtol=1e-6)
    np.testing.assert_allclose(_transformer().deprocess("data", out), image, atol=1e-6)


def test_transformer_resizes_to_the_input_and_checks_settings():
    t = io.Transformer({"data": (1, 1, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    big = np.full((4, 4, 1), 0.25, np.float32)
    np.testing.assert_allclose(t.preprocess("data", big), np.full((1, 2, 2), 0.25))
    with pytest.raises(ShapeError):
        t.set_channel_swap("data", (2, 1, 0))
    with pytest.raises(ShapeError):
        t.set_mean("data", np.zeros(3))
    t.set_mean("data", np.arange(16, dtype=np.float32).reshape(1, 4, 4))  # resized to 2x2
    assert t.mean["data"].shape == (1, 2, 2)


def test_blobproto_round_trip_and_legacy_shape():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    blob = io.array_to_blobproto(array, diff=-array)
    assert list(blob.shape.dim) == [2, 3]
    np.testing.assert_array_equal(io.blobproto_to_array(blob), array)
    np.testing.assert_array_equal(io.blobproto_to_array(blob, return_diff=True), -array)
    legacy = pb.BlobProto(num=1, channels=1, height=2, width=3)
    legacy.data.extend(range(6))
    assert io.blobproto_to_array(legacy).shape == (1, 1, 2, 3)
    text = io.arraylist_to_blobprotovector_str([array, array * 2])
    back = io.blobprotovector_str_to_arraylist(text)
    np.testing.assert_array_equal(back[1], array * 2)


def test_datum_round_trips():
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    datum = io.array_to_datum(pixels, label=7)
    assert datum.label == 7 and datum.data == pixels.tobytes() and not datum.float_data
    np.testing.assert_array_equal(io.datum_to_array(datum), pixels)
    floats = pixels.astype(np.float32) / 3
    datum = io.array_to_datum(floats)
    assert not datum.data and len(datum.float_data) == 12
    np.testing.assert_allclose(io.datum_to_array(datum), floats, rtol=1e-6)
    with pytest.raises(ShapeError):
        io.array_to_datum(np.zeros((2, 2)))

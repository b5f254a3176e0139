"""List files, class folders, image decoding and OpenCV-style bilinear resize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from netforge.data.image_list import (
    load_image,
    parse_list_file,
    resize_bilinear,
    scan_class_folders,
)
from netforge.errors import ConfigError, DataError


def test_list_file_splits_at_last_space(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a/b.jpg 0\n\n  \nmy dir/with space.png 12\nc.png\t3\r\nd.png -1\n")
    assert parse_list_file(path) == [
        ("a/b.jpg", 0), ("my dir/with space.png", 12), ("c.png", 3), ("d.png", -1)
    ]


@pytest.mark.parametrize("bad", ["no_label_here", "img.png label", "img.png 1.5", " 3"])
def test_list_file_bad_line_names_file_and_line(tmp_path, bad):
    path = tmp_path / "train.txt"
    path.write_text(f"ok.png 1\n\n{bad}\n")
    with pytest.raises(DataError, match=r"train\.txt:3:"):
        parse_list_file(path)


def test_list_file_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        parse_list_file(tmp_path / "missing.txt")


def test_scan_class_folders(tmp_path):
    for rel in ["dog/b.png", "dog/sub/a.JPG", "cat/z.jpeg", "cat/notes.txt", "bird/.hidden.png",
                "emu/x.bmp", ".git/y.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "stray.png").write_bytes(b"")
    samples, classes = scan_class_folders(tmp_path)
    assert classes == ["bird", "cat", "dog", "emu"]
    assert samples == [("cat/z.jpeg", 1), ("dog/b.png", 2), ("dog/sub/a.JPG", 2),
                       ("emu/x.bmp", 3)]


def test_scan_without_class_folders(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_class_folders(tmp_path)


def test_load_image_bgr_chw_and_gray(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    chw = load_image(tmp_path / "c.png")
    assert chw.shape == (3, 5, 7) and chw.dtype == np.uint8
    np.testing.assert_array_equal(chw, rgb[:, :, ::-1].transpose(2, 0, 1))
    gray = load_image(tmp_path / "c.png", color=False)
    assert gray.shape == (1, 5, 7)
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(gray[0], expected)

    Image.fromarray(rgb[:, :, 1], "L").save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png", color=None).shape == (1, 5, 7)
    expanded = load_image(tmp_path / "g.png")  # colour by default, as OpenCV's IMREAD_COLOR
    assert expanded.shape == (3, 5, 7)
    np.testing.assert_array_equal(expanded[2], rgb[:, :, 1])


def test_load_image_ignores_exif_orientation(tmp_path):
    rgb = np.zeros((4, 8, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW" — pixels must come out as stored
    Image.fromarray(rgb, "RGB").save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (3, 4, 8)


def test_load_image_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(DataError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    with pytest.raises(ConfigError, match="both"):
        load_image(tmp_path / "ok.png", resize=(8, 0))


def _opencv_linear_reference(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """INTER_LINEAR written out pixel by pixel: half-pixel centres, borders clamped."""
    in_h, in_w = src.shape

    def coord(d, n_in, n_out):
        s = (d + 0.5) * n_in / n_out - 0.5
        i = int(np.floor(s))
        f = s - i
        if i < 0:
            i, f = 0, 0.0
        if i >= n_in - 1:
            i, f = n_in - 1, 0.0
        return i, min(i + 1, n_in - 1), f

    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        y0, y1, fy = coord(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, fx = coord(x, in_w, out_w)
            top = src[y0, x0] * (1 - fx) + src[y0, x1] * fx
            bottom = src[y1, x0] * (1 - fx) + src[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("size", [(3, 5), (9, 4), (6, 6), (13, 17)])
def test_resize_matches_opencv_linear(size):
    src = np.random.default_rng(1).integers(0, 256, size=(2, 6, 6)).astype(np.float32)
    out = resize_bilinear(src, *size)
    assert out.shape == (2, *size)
    for c in range(2):
        np.testing.assert_allclose(out[c], _opencv_linear_reference(src[c], *size), atol=1e-3)
    as_uint8 = resize_bilinear(src.astype(np.uint8), *size)
    assert as_uint8.dtype == np.uint8
    assert np.abs(as_uint8.astype(float) - out).max() <= 0.5 + 1e-3

"""Transformer against a hand-written per-pixel reference of Caffe's rules."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.data.transformer import Transformer
from netforge.errors import DataError


def reference(image, *, scale=1.0, mean_values=None, mean_image=None, crop=0, h_off=0,
              w_off=0, mirror=False):
    """Caffe's DataTransformer loop: out[c, h, w'] = (pixel - mean) * scale."""
    channels, height, width = image.shape
    out_h, out_w = (crop, crop) if crop else (height, width)
    out = np.zeros((channels, out_h, out_w), np.float64)
    for c in range(channels):
        for h in range(out_h):
            for w in range(out_w):
                src_h, src_w = h + h_off, w + w_off
                pixel = float(image[c, src_h, src_w])
                if mean_image is not None:
                    pixel -= float(mean_image[c, src_h, src_w])
                elif mean_values is not None:
                    pixel -= float(mean_values[c] if len(mean_values) > 1 else mean_values[0])
                dst_w = out_w - 1 - w if mirror else w
                out[c, h, dst_w] = pixel * scale
    return out


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, size=(3, 7, 9), dtype=np.uint8)


def run(transformer, image, rng=None):
    out = np.full(transformer.output_shape(image.shape), np.nan, np.float32)
    transformer.apply(image, out, rng=rng)
    return out


def test_scale_only(image):
    out = run(Transformer(scale=0.00390625, train=False), image)
    np.testing.assert_allclose(out, reference(image, scale=0.00390625), rtol=1e-6)


@pytest.mark.parametrize("values", [[104.0], [104.0, 117.0, 123.0]])
def test_mean_values(image, values):
    out = run(Transformer(scale=0.5, mean=values, train=False), image)
    np.testing.assert_allclose(out, reference(image, scale=0.5, mean_values=values), rtol=1e-6)


def test_mean_file_with_centre_crop_in_test(image):
    mean = np.random.default_rng(1).uniform(0, 255, size=image.shape).astype(np.float32)
    out = run(Transformer(mean=mean, crop_size=4, train=False), image)
    # TEST crops the centre: offsets ((7-4)//2, (9-4)//2) = (1, 2)
    expected = reference(image, mean_image=mean, crop=4, h_off=1, w_off=2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_random_crop_and_mirror_follow_the_draws(image):
    mean = np.random.default_rng(2).uniform(0, 255, size=image.shape).astype(np.float32)
    transformer = Transformer(scale=0.1, mean=mean, crop_size=5, mirror=True, train=True)
    seen = set()
    for seed in range(12):
        out = run(transformer, image, rng=np.random.default_rng(seed))
        h_off, w_off, flip = Transformer(crop_size=5, mirror=True, train=True).offsets(
            7, 9, np.random.default_rng(seed))
        seen.add((h_off, w_off, flip))
        expected = reference(image, scale=0.1, mean_image=mean, crop=5, h_off=h_off,
                             w_off=w_off, mirror=flip)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    assert {flip for _, _, flip in seen} == {True, False}
    assert len({(h, w) for h, w, _ in seen}) > 1


def test_mirror_also_in_test_phase(image):
    transformer = Transformer(mirror=True, train=False)
    flips = set()
    for seed in range(10):
        out = run(transformer, image, rng=np.random.default_rng(seed))
        flipped = np.array_equal(out, reference(image, mirror=True))
        assert flipped or np.array_equal(out, reference(image))
        flips.add(flipped)
    assert flips == {True, False}


def test_float_input_and_float64_output():
    image = np.random.default_rng(3).normal(size=(2, 4, 4)).astype(np.float32)
    transformer = Transformer(scale=2.0, mean=[0.5, -1.0], train=False)
    out = np.empty((2, 4, 4), np.float64)
    transformer.apply(image, out)
    np.testing.assert_allclose(out, reference(image, scale=2.0, mean_values=[0.5, -1.0]),
                               rtol=1e-6)


def test_shape_errors(image):
    with pytest.raises(DataError, match=r"3×5×5.*3×7×9"):
        Transformer(mean=np.zeros((3, 5, 5), np.float32)).output_shape(image.shape)
    with pytest.raises(DataError, match="2 mean values"):
        Transformer(mean=[1.0, 2.0]).output_shape(image.shape)
    with pytest.raises(DataError, match="crop_size 8"):
        Transformer(crop_size=8).output_shape(image.shape)
    assert Transformer(crop_size=7).output_shape(image.shape) == (3, 7, 7)


@pytest.mark.parametrize("mean_kind", ["image", "values", "none"])
@pytest.mark.parametrize("train,crop", [(True, 5), (False, 5), (True, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gather_max", [4096, 10])  # the batch gather, then image by image
def test_apply_batch_equals_apply_image_by_image(mean_kind, train, crop, dtype, gather_max,
                                                 monkeypatch):
    monkeypatch.setattr("netforge.data.transformer.GATHER_MAX_ELEMENTS", gather_max)
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(9, 3, 7, 8), dtype=np.uint8)
    mean = {"image": rng.uniform(0, 255, size=(3, 7, 8)).astype(np.float32),
            "values": [104.0, 117.0, 123.0], "none": None}[mean_kind]
    t = Transformer(scale=0.017, mean=mean, crop_size=crop, mirror=True, train=train)
    draws = t.batch_draws(seed=3, index=2, count=9)
    assert 0 < (draws[:, 0] < 0.5).sum() < 9  # some images mirrored, some not
    shape = t.output_shape(images.shape[1:])
    expected = np.empty((9, *shape), dtype)
    for i in range(9):
        t.apply(images[i], expected[i], draw=draws[i])
    h_off, w_off, mirror = t.batch_offsets(7, 8, draws)
    assert [t.offsets(7, 8, draw=d) for d in draws] == \
        list(zip(h_off.tolist(), w_off.tolist(), mirror.tolist(), strict=True))
    got = np.empty((9, *shape), dtype)
    t.apply_batch(images, got, draws)
    np.testing.assert_array_equal(got, expected)
    for i in range(9):  # and Caffe's per-pixel loop
        h_off, w_off, mirror = t.offsets(7, 8, draw=draws[i])
        want = reference(images[i], scale=0.017, crop=crop, h_off=h_off, w_off=w_off,
                         mirror=mirror, mean_image=mean if mean_kind == "image" else None,
                         mean_values=mean if mean_kind == "values" else None)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-4)

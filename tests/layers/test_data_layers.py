"""Input, DummyData and Data layers."""

from __future__ import annotations

import lmdb
import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from netforge import netforge_pb2 as pb
from netforge.blob import Blob
from netforge.data.convert import convert_images
from netforge.data.records import save_mean_file
from netforge.errors import ConfigError, DataError
from netforge.layers.base import LayerContext
from netforge.layers.data import DataLayer, DummyDataLayer, InputLayer
from netforge.layers.registry import layer_class


def build(cls, text, phase="TRAIN", seed=0):
    param = text_format.Parse(text, pb.LayerParameter())
    layer = cls(param, LayerContext(phase=phase, rng=np.random.default_rng(seed)))
    layer.setup([])
    tops = [Blob(shape) for shape in layer.reshape([])]
    return layer, tops


def test_registered_types():
    assert layer_class("Input") is InputLayer
    assert layer_class("DummyData") is DummyDataLayer
    assert layer_class("Data") is DataLayer


# -- Input ----------------------------------------------------------------------------------------
def test_input_shapes():
    layer, tops = build(InputLayer, 'name: "in" type: "Input" top: "a" top: "b" '
                        "input_param { shape { dim: 2 dim: 3 } }")
    assert [t.shape for t in tops] == [(2, 3), (2, 3)]
    layer, tops = build(InputLayer, 'name: "in" type: "Input" top: "a" top: "b" '
                        "input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } }")
    assert [t.shape for t in tops] == [(2, 3), (2,)]
    layer.forward([], tops)
    with pytest.raises(ConfigError, match="2 shapes given for 3 tops"):
        build(InputLayer, 'name: "in" type: "Input" top: "a" top: "b" top: "c" '
              "input_param { shape { dim: 1 } shape { dim: 2 } }")


# -- DummyData ------------------------------------------------------------------------------------
def test_dummy_data_constant_and_random():
    layer, tops = build(DummyDataLayer, """name: "d" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
          data_filler { type: "constant" value: 7 } data_filler { type: "gaussian" } }""")
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[0].data, np.full((2, 3), 7))
    first = tops[1].data.copy()
    tops[0].data[...] = 0  # constant tops are filled once, as Caffe's (refill only random ones)
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[0].data, 0)
    assert not np.array_equal(first, tops[1].data)


def test_dummy_data_legacy_dims_and_default_filler():
    layer, tops = build(DummyDataLayer, """name: "d" type: "DummyData" top: "x" top: "y"
        dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 width: 5 }""")
    assert [t.shape for t in tops] == [(2, 3, 4, 5), (2, 1, 4, 5)]
    tops[0].data[...] = 3
    layer.forward([], tops)
    assert not tops[0].data.any() and not tops[1].data.any()
    with pytest.raises(ConfigError, match="data_filler"):
        build(DummyDataLayer, """name: "d" type: "DummyData" top: "x" top: "y" top: "z"
            dummy_data_param { shape { dim: 1 } data_filler {} data_filler {} }""")


# -- Data -----------------------------------------------------------------------------------------
def write_caffe_lmdb(path, images, labels):
    """Datums written by Caffe's rules with the lmdb package: key %08d_path, BGR CHW bytes."""
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in reversed(range(len(images))):  # insertion order must not matter
            chw = images[i]
            datum = pb.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2],
                             data=chw.tobytes(), label=int(labels[i]))
            txn.put(f"{i:08d}_class/img_{i}.jpg".encode(), datum.SerializeToString())
    env.close()


@pytest.fixture
def caffe_db(tmp_path):
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, size=(3, 6, 8), dtype=np.uint8) for _ in range(5)]
    labels = [3, 1, 4, 1, 5]
    write_caffe_lmdb(tmp_path / "db", images, labels)
    return tmp_path / "db", images, labels


def data_text(source, extra="", transform="", batch=2, tops=('"data"', '"label"')):
    top_lines = " ".join(f"top: {t}" for t in tops)
    return (f'name: "data" type: "Data" {top_lines} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {extra} }} '
            f"transform_param {{ {transform} }}")


def test_data_reads_caffe_lmdb_in_key_order_with_wraparound(caffe_db):
    path, images, labels = caffe_db
    layer, tops = build(DataLayer, data_text(path))
    assert [t.shape for t in tops] == [(2, 3, 6, 8), (2,)]
    order = []
    for _ in range(4):  # 8 records from a 5-record database
        layer.forward([], tops)
        for row, label in zip(tops[0].data, tops[1].data, strict=True):
            index = next(i for i, img in enumerate(images) if np.array_equal(row, img))
            assert label == labels[index]
            order.append(index)
    assert order == [0, 1, 2, 3, 4, 0, 1, 2]
    layer.close()


def test_data_transform_and_deprecated_fields(caffe_db, tmp_path):
    path, images, _ = caffe_db
    layer, tops = build(DataLayer, data_text(path, transform="scale: 0.5 mean_value: 10 "
                                             "mean_value: 20 mean_value: 30"), phase="TEST")
    layer.forward([], tops)
    means = np.array([10, 20, 30], np.float32).reshape(3, 1, 1)
    np.testing.assert_allclose(tops[0].data[1], (images[1] - means) * 0.5)
    layer.close()

    mean = np.random.default_rng(1).uniform(0, 255, size=(3, 6, 8)).astype(np.float32)
    save_mean_file(tmp_path / "mean.binaryproto", mean)
    layer, tops = build(DataLayer, data_text(
        path, extra=f'scale: 0.25 crop_size: 4 mean_file: "{tmp_path / "mean.binaryproto"}"',
        batch=1, tops=('"data"',)), phase="TEST")
    assert [t.shape for t in tops] == [(1, 3, 4, 4)]
    layer.forward([], tops)
    np.testing.assert_allclose(tops[0].data[0], (images[0] - mean)[:, 1:5, 2:6] * 0.25,
                               rtol=1e-5, atol=1e-5)
    layer.close()


def test_data_state_resumes_bit_exactly(caffe_db):
    path, _, _ = caffe_db
    text = data_text(path, batch=3, transform="crop_size: 4 mirror: true scale: 0.1")
    layer, tops = build(DataLayer, text, seed=3)
    layer.forward([], tops)
    state = layer.get_state()
    assert state["position"] == 3 and state["batch_index"] == 1
    expected = []
    for _ in range(4):
        layer.forward([], tops)
        expected.append(tops[0].data.copy())
    layer.close()

    other, tops = build(DataLayer, text, seed=99)  # a fresh net with a different seed
    other.set_state(state)
    for batch in expected:
        other.forward([], tops)
        np.testing.assert_array_equal(tops[0].data, batch)
    other.close()


def test_data_errors(caffe_db, tmp_path):
    path, _, _ = caffe_db
    with pytest.raises(ConfigError, match="only LMDB"):
        build(DataLayer, data_text(path).replace("backend: LMDB", "backend: LEVELDB"))
    with pytest.raises(DataError, match="missing_db"):
        build(DataLayer, data_text(tmp_path / "missing_db"))
    with pytest.raises(DataError, match="mean file"):
        build(DataLayer, data_text(path, transform=f'mean_file: "{tmp_path / "no.proto"}"'))
    mean = np.zeros((3, 5, 5), np.float32)
    save_mean_file(tmp_path / "small.binaryproto", mean)
    with pytest.raises(DataError, match="3×5×5.*3×6×8"):
        build(DataLayer, data_text(path, transform=f'mean_file: "{tmp_path}/small.binaryproto"'))


def make_class_folders(root):
    rng = np.random.default_rng(11)
    expected = {}
    for label, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i, fmt in enumerate(["png", "jpg", "png"]):
            rgb = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
            path = root / name / f"{i}.{fmt}"
            Image.fromarray(rgb, "RGB").save(path)
            decoded = np.asarray(Image.open(path).convert("RGB"))  # JPEG is lossy
            expected[f"{name}/{i}.{fmt}"] = (decoded[:, :, ::-1].transpose(2, 0, 1), label)
    return expected


@pytest.mark.parametrize("encoded", [False, True])
def test_convert_then_data_layer_returns_bgr_pixels(tmp_path, encoded):
    expected = make_class_folders(tmp_path / "src")
    convert_images(tmp_path / "src", tmp_path / "db", encoded=encoded, shuffle=False)
    layer, tops = build(DataLayer, data_text(tmp_path / "db", batch=6), phase="TEST")
    layer.forward([], tops)
    for row, label, (pixels, want_label) in zip(tops[0].data, tops[1].data, expected.values(),
                                                strict=True):
        np.testing.assert_array_equal(row, pixels)
        assert label == want_label
    layer.close()

"""Input, DummyData and Data layers."""

from __future__ import annotations

import h5py
import lmdb
import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from netforge import netforge_pb2 as pb
from netforge.blob import Blob
from netforge.data.convert import convert_images
from netforge.data.records import save_mean_file
from netforge.errors import ConfigError, DataError, ShapeError
from netforge.layers.base import LayerContext
from netforge.layers.data import (
    DataLayer,
    DummyDataLayer,
    HDF5DataLayer,
    HDF5OutputLayer,
    ImageDataLayer,
    InputLayer,
    MemoryDataLayer,
)
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
    assert layer_class("ImageData") is ImageDataLayer
    assert layer_class("HDF5Data") is HDF5DataLayer
    assert layer_class("HDF5Output") is HDF5OutputLayer
    assert layer_class("MemoryData") is MemoryDataLayer


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
# Datum on the wire (reference §d): channels 1, height 2, width 3 (varint), data 4 (bytes),
# label 5 (varint), encoded 7 (bool). Encoded and decoded here by hand, not with protobuf, so
# these tests check the wire format itself.
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 travel as 10-byte two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_datum_wire(channels, height, width, data: bytes, label: int, encoded=False) -> bytes:
    def varint_field(number, value):
        return _varint(number << 3) + _varint(value)

    out = varint_field(1, channels) + varint_field(2, height) + varint_field(3, width)
    out += _varint(4 << 3 | 2) + _varint(len(data)) + data
    out += varint_field(5, label)
    if encoded:
        out += varint_field(7, 1)
    return out


def decode_datum_wire(raw: bytes) -> dict:
    """Field number -> value (ints for varints, bytes for length-delimited); packed float
    data (field 6) is not expected in uint8 Datums."""
    fields, pos = {}, 0

    def read_varint():
        nonlocal pos
        shift = value = 0
        while True:
            byte = raw[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(raw):
        tag = read_varint()
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            fields[number] = read_varint()
        elif wire_type == 2:
            size = read_varint()
            fields[number] = raw[pos : pos + size]
            pos += size
        else:
            raise AssertionError(f"unexpected wire type {wire_type} for field {number}")
    return fields


def write_caffe_lmdb(path, images, labels, encoded_bytes=None):
    """An LMDB as Caffe's convert_imageset writes it: key %08d_<path>, Datum wire bytes."""
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in reversed(range(len(images))):  # insertion order must not matter
            chw = images[i]
            payload = chw.tobytes() if encoded_bytes is None else encoded_bytes[i]
            # Caffe leaves the size fields 0 for encoded Datums.
            dims = (0, 0, 0) if encoded_bytes is not None else chw.shape
            value = encode_datum_wire(*dims, payload, int(labels[i]),
                                      encoded=encoded_bytes is not None)
            txn.put(f"{i:08d}_class/img_{i}.jpg".encode(), value)
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


def test_data_reads_caffe_encoded_lmdb(tmp_path):
    rng = np.random.default_rng(5)
    images, blobs = [], []
    for i in range(3):
        rgb = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
        Image.fromarray(rgb, "RGB").save(tmp_path / f"{i}.png")
        blobs.append((tmp_path / f"{i}.png").read_bytes())
        images.append(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))  # BGR CHW
    write_caffe_lmdb(tmp_path / "db", images, [7, 8, 9], encoded_bytes=blobs)
    layer, tops = build(DataLayer, data_text(tmp_path / "db", batch=3), phase="TEST")
    assert tops[0].shape == (3, 3, 4, 5)
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[0].data, np.stack(images))
    np.testing.assert_array_equal(tops[1].data, [7, 8, 9])
    layer.close()
    # force_gray: one channel, ITU-R 601 luma of the RGB pixels
    layer, tops = build(DataLayer, data_text(tmp_path / "db", batch=1,
                                             transform="force_gray: true"), phase="TEST")
    layer.forward([], tops)
    b, g, r = images[0].astype(np.float64)
    np.testing.assert_allclose(tops[0].data[0, 0], np.rint(0.114 * b + 0.587 * g + 0.299 * r),
                               atol=1)
    layer.close()


def test_netforge_lmdb_follows_caffe_rules(tmp_path):
    """What convert writes, read with the lmdb package and a hand-written wire decoder."""
    expected = make_class_folders(tmp_path / "src")
    convert_images(tmp_path / "src", tmp_path / "db", shuffle=False)
    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    env.close()
    assert [key.decode() for key, _ in records] == [f"{i:08d}_{rel}"
                                                    for i, rel in enumerate(expected)]
    for (_, value), (pixels, label) in zip(records, expected.values(), strict=True):
        fields = decode_datum_wire(value)
        assert (fields[1], fields[2], fields[3]) == pixels.shape
        assert fields[4] == pixels.tobytes()  # uint8, C-H-W, BGR
        assert fields.get(5, 0) == label
        assert not fields.get(7, 0)


def test_data_worker_count_does_not_change_batches(caffe_db, monkeypatch):
    path, _, _ = caffe_db
    text = data_text(path, batch=4, transform="crop_size: 4 mirror: true mean_value: 3")
    batches = {}
    for workers in ("1", "3"):
        monkeypatch.setenv("NETFORGE_DATA_WORKERS", workers)
        layer, tops = build(DataLayer, text, seed=5)
        batches[workers] = []
        for _ in range(3):
            layer.forward([], tops)
            batches[workers].append(tops[0].data.copy())
        layer.close()
    for a, b in zip(batches["1"], batches["3"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_data_random_crop_and_mirror_cover_the_choices(caffe_db):
    path, images, _ = caffe_db
    layer, tops = build(DataLayer, data_text(path, batch=5, transform="crop_size: 5 mirror: true",
                                             tops=('"data"',)), seed=1)
    seen = set()
    for _ in range(8):
        layer.forward([], tops)
        for row, image in zip(tops[0].data, images, strict=True):
            matches = [(h, w, m) for h in range(2) for w in range(4) for m in (False, True)
                       if np.array_equal(row, (image[:, h:h + 5, w:w + 5][:, :, ::-1] if m
                                               else image[:, h:h + 5, w:w + 5]))]
            assert matches, "every row must be a crop (maybe mirrored) of its image"
            seen.update(matches)
    assert {m for _, _, m in seen} == {False, True}
    assert len({(h, w) for h, w, _ in seen}) >= 6
    layer.close()


def test_data_errors_for_damaged_databases(caffe_db, tmp_path):
    path, images, labels = caffe_db
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "data.mdb").write_bytes(b"\x00not an lmdb" * 100)
    with pytest.raises(DataError, match="garbage.*(damaged|not a readable)"):
        build(DataLayer, data_text(tmp_path / "garbage"))

    env = lmdb.open(str(tmp_path / "bad_record"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"00000000_a.png", encode_datum_wire(1, 2, 2, b"\x01\x02\x03\x04", 0))
        txn.put(b"00000001_b.png", b"\xff\xff\xff")
    env.close()
    layer, tops = build(DataLayer, data_text(tmp_path / "bad_record"))
    with pytest.raises(DataError, match="00000001_b.png.*not a valid Datum"):
        layer.forward([], tops)
    layer.close()

    sizes = [images[0], np.zeros((3, 5, 8), np.uint8)]
    write_caffe_lmdb(tmp_path / "sizes", sizes, [0, 1])
    layer, tops = build(DataLayer, data_text(tmp_path / "sizes"))
    with pytest.raises(DataError, match=r"00000001_class/img_1.jpg.*3×5×8.*first record is 3×6×8"):
        layer.forward([], tops)
    layer.close()
    layer, tops = build(DataLayer, data_text(tmp_path / "sizes", transform="crop_size: 4"))
    layer.forward([], tops)  # a crop makes different sizes fine, as in Caffe
    layer.close()


def test_convert_hdf5_then_hdf5data_layer_returns_bgr_pixels(tmp_path):
    expected = make_class_folders(tmp_path / "src")
    convert_images(tmp_path / "src", tmp_path / "h5", backend="hdf5", shuffle=False)
    layer, tops = build(HDF5DataLayer, f'name: "d" type: "HDF5Data" top: "data" top: "label" '
                        f'hdf5_data_param {{ source: "{tmp_path}/h5/list.txt" batch_size: 6 }}',
                        phase="TEST")
    assert [t.shape for t in tops] == [(6, 3, 5, 6), (6,)]
    layer.forward([], tops)
    for row, label, (pixels, want_label) in zip(tops[0].data, tops[1].data, expected.values(),
                                                strict=True):
        np.testing.assert_array_equal(row, pixels)
        assert label == want_label
    layer.close()


# -- Data in a solver: snapshot and resume continue the same stream ---------------------------
SOLVER_NET = """
name: "datanet"
layer { name: "data" type: "Data" top: "data" top: "label"
        data_param { source: "@SOURCE@" batch_size: 3 backend: LMDB }
        transform_param { crop_size: 4 mirror: true scale: 0.01 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_solver_resume_with_data_layer_is_bit_exact(caffe_db, tmp_path):
    from netforge import config
    from netforge.train.solver import Solver

    path, _, _ = caffe_db

    def solver():
        sp = config.parse_text(f'base_lr: 0.1 lr_policy: "fixed" max_iter: 10 random_seed: 3 '
                               f'snapshot_prefix: "{tmp_path}/snap"', pb.SolverParameter())
        sp.train_net_param.CopyFrom(config.parse_text(SOLVER_NET.replace("@SOURCE@", str(path)),
                                                      pb.NetParameter()))
        return Solver(sp)

    straight = solver()
    straight.step(7)
    first = solver()
    first.step(4)
    _, state = first.snapshot()
    first.close()
    resumed = solver()
    resumed.restore(state)
    resumed.step(3)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params, strict=True):
        np.testing.assert_array_equal(a.blob.data, b.blob.data)
    assert resumed.net.layer_dict["data"].get_state() == \
        straight.net.layer_dict["data"].get_state()
    straight.close()
    resumed.close()


# -- ImageData ------------------------------------------------------------------------------------
def write_image_list(root, sizes, names=None):
    """Images under ROOT/imgs, a list file ROOT/list.txt; returns {relpath: (BGR CHW, label)}."""
    rng = np.random.default_rng(3)
    (root / "imgs").mkdir(parents=True)
    expected, lines = {}, []
    for i, (h, w) in enumerate(sizes):
        rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        rel = f"imgs/{names[i] if names else f'{i}.png'}"
        Image.fromarray(rgb, "RGB").save(root / rel)
        expected[rel] = (np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)), 10 + i)
        lines.append(f"{rel} {10 + i}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return expected


def image_data_text(root, extra="", transform=""):
    return (f'name: "img" type: "ImageData" top: "data" top: "label" '
            f'image_data_param {{ source: "{root}/list.txt" root_folder: "{root}/" {extra} }} '
            f"transform_param {{ {transform} }}")


def test_image_data_reads_the_list_in_order(tmp_path):
    expected = write_image_list(tmp_path, [(4, 5)] * 3, names=["a b.png", "b.png", "c.png"])
    layer, tops = build(ImageDataLayer, image_data_text(tmp_path, "batch_size: 2"), phase="TEST")
    assert [t.shape for t in tops] == [(2, 3, 4, 5), (2,)]
    rows = []
    for _ in range(3):
        layer.forward([], tops)
        rows += [(row.copy(), label) for row, label in zip(tops[0].data, tops[1].data,
                                                          strict=True)]
    want = list(expected.values())
    for (row, label), (pixels, want_label) in zip(rows, want + want, strict=True):
        np.testing.assert_array_equal(row, pixels)
        assert label == want_label
    layer.close()


def test_image_data_resize_gray_and_shuffle_per_epoch(tmp_path):
    write_image_list(tmp_path, [(4, 5), (6, 3), (5, 5), (7, 8), (3, 4), (4, 4)])
    layer, tops = build(ImageDataLayer, image_data_text(
        tmp_path, "batch_size: 3 new_height: 6 new_width: 7 is_color: false shuffle: true"))
    assert tops[0].shape == (3, 1, 6, 7)
    epochs = []
    for _ in range(3):  # three epochs of two batches
        labels = []
        for _ in range(2):
            layer.forward([], tops)
            labels += tops[1].data.tolist()
        assert sorted(labels) == [10, 11, 12, 13, 14, 15]  # each epoch is a permutation
        epochs.append(labels)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled every epoch
    layer.close()


def test_image_data_errors(tmp_path):
    write_image_list(tmp_path, [(4, 5), (6, 3)])
    layer, tops = build(ImageDataLayer, image_data_text(tmp_path, "batch_size: 2"))
    with pytest.raises(DataError, match=r"1.png is 3×6×3 but the first image is 3×4×5"):
        layer.forward([], tops)
    layer.close()
    (tmp_path / "list.txt").write_text("imgs/0.png 1\nimgs/1.png\n")
    with pytest.raises(DataError, match=r"list.txt:2: expected"):
        build(ImageDataLayer, image_data_text(tmp_path, "batch_size: 2"))
    (tmp_path / "list.txt").write_text("imgs/missing.png 1\n")
    with pytest.raises(DataError, match=r'ImageData "img".*missing.png'):
        build(ImageDataLayer, image_data_text(tmp_path, "batch_size: 2"))
    with pytest.raises(ConfigError, match="new_height and new_width"):
        build(ImageDataLayer, image_data_text(tmp_path, "new_height: 4"))


# -- HDF5Data ------------------------------------------------------------------------------------
def write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)


def test_hdf5_data_reads_across_files_with_any_rank(tmp_path):
    a = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    b = -np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2) - 1
    write_h5(tmp_path / "a.h5", data=a, label=np.array([[1, 2], [3, 4], [5, 6]], np.int32))
    write_h5(tmp_path / "b.h5", data=b, label=np.array([[7, 8], [9, 10]], np.int64))
    (tmp_path / "list.txt").write_text("a.h5\n\n  b.h5  \n")  # relative to the list file
    layer, tops = build(HDF5DataLayer, f'name: "h" type: "HDF5Data" top: "label" top: "data" '
                        f'hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 4 }}')
    assert [t.shape for t in tops] == [(4, 2), (4, 2, 2)]
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[1].data, np.concatenate([a, b[:1]]))
    np.testing.assert_array_equal(tops[0].data, [[1, 2], [3, 4], [5, 6], [7, 8]])
    assert tops[0].data.dtype == np.float32
    layer.forward([], tops)  # wraps around: b[1], a[0], a[1], a[2]
    np.testing.assert_array_equal(tops[1].data, np.concatenate([b[1:], a]))
    layer.close()


def test_hdf5_data_errors(tmp_path):
    write_h5(tmp_path / "a.h5", data=np.zeros((3, 2)), label=np.zeros(2))
    (tmp_path / "list.txt").write_text("a.h5\nmissing.h5\n")
    text = (f'name: "h" type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 2 }}')
    with pytest.raises(DataError, match=r"list.txt:2: HDF5 file missing.h5 does not exist"):
        build(HDF5DataLayer, text)
    (tmp_path / "list.txt").write_text("a.h5\n")
    with pytest.raises(DataError, match='"label" has 2 rows but "data" has 3'):
        build(HDF5DataLayer, text)
    with pytest.raises(DataError, match='no dataset "other"'):
        build(HDF5DataLayer, text.replace('top: "label"', 'top: "other"'))
    with pytest.raises(ConfigError, match="does not transform"):
        build(HDF5DataLayer, text + " transform_param { scale: 2 }")
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    (tmp_path / "list.txt").write_text("bad.h5\n")
    with pytest.raises(DataError, match="bad.h5 is not a readable HDF5 file"):
        build(HDF5DataLayer, text)


# -- MemoryData -----------------------------------------------------------------------------------
MEMORY = ('name: "mem" type: "MemoryData" top: "data" top: "label" '
          "memory_data_param { batch_size: 2 channels: 3 height: 2 width: 1 }")


def test_memory_data_serves_batches_and_wraps():
    layer, tops = build(MemoryDataLayer, MEMORY)
    assert [t.shape for t in tops] == [(2, 3, 2, 1), (2,)]
    data = np.random.default_rng(0).normal(size=(4, 3, 2, 1))
    layer.set_input_arrays(data, np.array([[5], [6], [7], [8]]))
    for rows in ([0, 1], [2, 3], [0, 1]):
        layer.forward([], tops)
        np.testing.assert_array_equal(tops[0].data, data[rows].astype(np.float32))
        np.testing.assert_array_equal(tops[1].data, np.array([5, 6, 7, 8])[rows])
    state = layer.get_state()
    layer.forward([], tops)
    layer.set_state(state)
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[1].data, [7, 8])


def test_memory_data_errors():
    layer, tops = build(MemoryDataLayer, MEMORY)
    with pytest.raises(DataError, match="set_input_arrays"):
        layer.forward([], tops)
    with pytest.raises(DataError, match=r"shape \(2, 3, 2, 2\).*\(n, 3, 2, 1\)"):
        layer.set_input_arrays(np.zeros((2, 3, 2, 2)), np.zeros(2))
    with pytest.raises(DataError, match="3 rows is not a .*multiple of batch_size 2"):
        layer.set_input_arrays(np.zeros((3, 3, 2, 1)), np.zeros(3))
    with pytest.raises(DataError, match="3 labels"):
        layer.set_input_arrays(np.zeros((2, 3, 2, 1)), np.zeros(3))
    with pytest.raises(ConfigError, match='MemoryData "mem".*positive'):
        build(MemoryDataLayer, MEMORY.replace("height: 2", "height: 0"))


# -- HDF5Output -----------------------------------------------------------------------------------
def test_hdf5_output_appends_every_batch(tmp_path):
    param = text_format.Parse(
        f'name: "out" type: "HDF5Output" bottom: "d" bottom: "l" '
        f'hdf5_output_param {{ file_name: "{tmp_path}/out.h5" }}', pb.LayerParameter())
    layer = HDF5OutputLayer(param, LayerContext())
    layer.setup([(2, 3), (2,)])
    assert layer.reshape([(2, 3), (2,)]) == []
    with pytest.raises(ShapeError, match="same first dimension"):
        layer.reshape([(2, 3), (3,)])
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(2, 3)).astype(np.float32), np.array([i, i + 1], np.float32))
               for i in range(3)]
    for data, label in batches:
        bottoms = [Blob((2, 3)), Blob((2,))]
        bottoms[0].data[...], bottoms[1].data[...] = data, label
        layer.forward(bottoms, [])
    layer.close()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][...], np.concatenate([d for d, _ in batches]))
        np.testing.assert_array_equal(f["label"][...], np.concatenate([b for _, b in batches]))

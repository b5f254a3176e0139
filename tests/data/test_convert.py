"""convert_images / compute_mean: folders or list files -> LMDB / HDF5 datasets."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from netforge import netforge_pb2 as pb
from netforge.data.convert import compute_mean, convert_images
from netforge.data.records import datum_to_array
from netforge.data.stores import LmdbReader
from netforge.errors import DataError


def make_folders(root, per_class=3, classes=("cat", "dog"), size=(4, 5), fmt="png"):
    """Tiny random colour images ROOT/<class>/<i>.<fmt>; returns {relpath: BGR CHW uint8}."""
    rng = np.random.default_rng(42)
    pixels = {}
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            rel = f"{name}/{i}.{fmt}"
            Image.fromarray(rgb, "RGB").save(root / rel)
            pixels[rel] = np.asarray(Image.open(root / rel).convert("RGB"))[:, :, ::-1] \
                .transpose(2, 0, 1)
    return pixels


def read_db(path):
    with LmdbReader(path) as reader:
        return [(key.decode(), pb.Datum.FromString(value)) for key, value in reader]


def test_folders_to_lmdb_exact_pixels(tmp_path):
    pixels = make_folders(tmp_path / "src")
    progress = []
    summary = convert_images(tmp_path / "src", tmp_path / "db", shuffle=False,
                             progress=lambda n, total: progress.append((n, total)))
    assert summary.counts == {"": 6} and summary.skipped == []
    assert summary.image_shape == (3, 4, 5)
    assert progress[-1] == (6, 6) and len(progress) == 6
    assert (tmp_path / "db" / "labels.txt").read_text() == "cat\ndog\n"
    records = read_db(tmp_path / "db")
    assert [key for key, _ in records] == [f"{i:08d}_{rel}" for i, rel in enumerate(pixels)]
    for (_key, datum), (rel, expected) in zip(records, pixels.items(), strict=True):
        array, label = datum_to_array(datum)
        assert label == (0 if rel.startswith("cat") else 1)
        np.testing.assert_array_equal(array, expected)


def test_shuffle_is_seeded(tmp_path):
    make_folders(tmp_path / "src", per_class=6)
    orders = []
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        convert_images(tmp_path / "src", tmp_path / name, seed=seed)
        orders.append([key[9:] for key, _ in read_db(tmp_path / name)])
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[0]) == sorted(orders[2])


def test_val_fraction_splits_per_class(tmp_path):
    make_folders(tmp_path / "src", per_class=10, classes=("a", "b", "c"))
    summary = convert_images(tmp_path / "src", tmp_path / "db", val_fraction=0.2)
    assert summary.counts == {"train": 24, "val": 6}
    assert (tmp_path / "db" / "labels.txt").read_text() == "a\nb\nc\n"
    train = [datum.label for _, datum in read_db(tmp_path / "db" / "train")]
    val = {key[9:] for key, _ in read_db(tmp_path / "db" / "val")}
    assert sorted(train) == [0] * 8 + [1] * 8 + [2] * 8
    assert sorted(v.split("/")[0] for v in val) == ["a", "a", "b", "b", "c", "c"]
    train_paths = {key[9:] for key, _ in read_db(tmp_path / "db" / "train")}
    assert not train_paths & val


def test_list_file_source(tmp_path):
    root = tmp_path / "root"
    (root / "my dir").mkdir(parents=True)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    Image.fromarray(rgb, "RGB").save(root / "my dir" / "x y.png")
    Image.fromarray(rgb[::-1].copy(), "RGB").save(root / "b.png")
    (tmp_path / "list.txt").write_text("my dir/x y.png 5\nb.png 2\n")
    summary = convert_images(root, tmp_path / "db", list_file=tmp_path / "list.txt",
                             shuffle=False, gray=True)
    assert summary.labels == ["2", "5"]
    assert (tmp_path / "db" / "labels.txt").read_text() == "2\n5\n"
    records = read_db(tmp_path / "db")
    assert [key for key, _ in records] == ["00000000_my dir/x y.png", "00000001_b.png"]
    assert [d.label for _, d in records] == [5, 2]
    assert datum_to_array(records[0][1])[0].shape == (1, 2, 3)


def test_existing_dest_is_refused_unless_overwrite(tmp_path):
    make_folders(tmp_path / "src")
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="already exists.*--overwrite"):
        convert_images(tmp_path / "src", tmp_path / "db")
    assert (tmp_path / "db" / "keep.txt").exists()
    convert_images(tmp_path / "src", tmp_path / "db", overwrite=True)
    assert not (tmp_path / "db" / "keep.txt").exists()
    assert len(read_db(tmp_path / "db")) == 6


def test_unreadable_image_is_skipped_and_named(tmp_path):
    make_folders(tmp_path / "src")
    (tmp_path / "src" / "dog" / "broken.png").write_bytes(b"not a png")
    summary = convert_images(tmp_path / "src", tmp_path / "db")
    assert summary.counts == {"": 6}
    assert [path for path, _ in summary.skipped] == ["dog/broken.png"]
    assert "dog/broken.png" in str(summary) and "skipped 1" in str(summary)
    assert all("broken" not in key for key, _ in read_db(tmp_path / "db"))


def test_interrupted_conversion_leaves_no_dest(tmp_path):
    make_folders(tmp_path / "src", per_class=5)

    def interrupt(done, total):
        if done == 4:
            raise KeyboardInterrupt

    for kwargs in ({}, {"val_fraction": 0.2}, {"backend": "hdf5"}):
        with pytest.raises(KeyboardInterrupt):
            convert_images(tmp_path / "src", tmp_path / "db", progress=interrupt, **kwargs)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_check_size(tmp_path):
    make_folders(tmp_path / "src")
    Image.new("RGB", (9, 9)).save(tmp_path / "src" / "dog" / "big.png")
    with pytest.raises(DataError, match="dog/big.png is 3×9×9"):
        convert_images(tmp_path / "src", tmp_path / "db", check_size=True, shuffle=False)
    assert not (tmp_path / "db").exists()
    summary = convert_images(tmp_path / "src", tmp_path / "db")  # sizes may vary without it
    assert summary.image_shape is None
    summary = convert_images(tmp_path / "src", tmp_path / "db2", resize=(6, 7), check_size=True)
    assert summary.image_shape == (3, 6, 7)


def test_encoded_png_and_raw_jpeg_bytes(tmp_path):
    pixels = make_folders(tmp_path / "src")
    convert_images(tmp_path / "src", tmp_path / "png", encoded=True, shuffle=False)
    for (key, datum), expected in zip(read_db(tmp_path / "png"), pixels.values(), strict=True):
        assert datum.encoded
        assert (tmp_path / "src" / key[9:]).read_bytes() == datum.data  # stored unchanged
        np.testing.assert_array_equal(datum_to_array(datum)[0], expected)

    jpegs = make_folders(tmp_path / "jsrc", fmt="jpg")
    convert_images(tmp_path / "jsrc", tmp_path / "jpg", encoded=True, encode_type="jpg",
                   shuffle=False)
    convert_images(tmp_path / "jsrc", tmp_path / "jpg2png", encoded=True, encode_type="png",
                   shuffle=False)
    plain = read_db(tmp_path / "png")  # encode_type alone does not switch encoding on
    convert_images(tmp_path / "src", tmp_path / "raw", encode_type="jpg")
    assert plain[0][1].encoded and not read_db(tmp_path / "raw")[0][1].encoded
    for (key, datum), (_, d2), expected in zip(read_db(tmp_path / "jpg"),
                                               read_db(tmp_path / "jpg2png"),
                                               jpegs.values(), strict=True):
        assert datum.data == (tmp_path / "jsrc" / key[9:]).read_bytes()
        assert d2.data[:4] == b"\x89PNG"
        np.testing.assert_array_equal(datum_to_array(datum)[0], expected)
        np.testing.assert_array_equal(datum_to_array(d2)[0], expected)


def test_hdf5_backend(tmp_path):
    pixels = make_folders(tmp_path / "src")
    summary = convert_images(tmp_path / "src", tmp_path / "h5", backend="hdf5", shuffle=False)
    assert summary.counts == {"": 6}
    parts = (tmp_path / "h5" / "list.txt").read_text().split()
    assert len(parts) == 1 and parts[0] == str((tmp_path / "h5" / "part_00000.h5").absolute())
    with h5py.File(parts[0], "r") as f:
        data, label = f["data"][...], f["label"][...]
    assert data.dtype == np.float32 and data.shape == (6, 3, 4, 5)
    np.testing.assert_array_equal(data, np.stack(list(pixels.values())).astype(np.float32))
    np.testing.assert_array_equal(label, [0, 0, 0, 1, 1, 1])


def test_compute_mean(tmp_path):
    pixels = make_folders(tmp_path / "src")
    convert_images(tmp_path / "src", tmp_path / "db", val_fraction=0.4)
    with pytest.raises(DataError, match="train"):
        compute_mean(tmp_path / "db")
    mean = compute_mean(tmp_path / "db" / "train")
    train = [datum_to_array(d)[0] for _, d in read_db(tmp_path / "db" / "train")]
    assert mean.shape == (1, 3, 4, 5) and mean.dtype == np.float32
    np.testing.assert_allclose(mean[0], np.mean(train, axis=0), rtol=1e-6)
    assert len(train) == 4 and len(pixels) == 6


def test_bad_arguments(tmp_path):
    make_folders(tmp_path / "src")
    with pytest.raises(DataError, match="LevelDB"):
        convert_images(tmp_path / "src", tmp_path / "db", backend="leveldb")
    with pytest.raises(DataError, match="does not exist"):
        convert_images(tmp_path / "nope", tmp_path / "db")
    assert not (tmp_path / "db").exists()


def test_hdf5_parts_are_bounded(tmp_path, monkeypatch):
    from netforge.data import convert

    monkeypatch.setattr(convert, "HDF5_PART_BYTES", 2 * 3 * 4 * 5 * 4)  # two images a part
    make_folders(tmp_path / "src", per_class=5)
    convert_images(tmp_path / "src", tmp_path / "h5", backend="hdf5", shuffle=False)
    parts = (tmp_path / "h5" / "list.txt").read_text().split()
    assert len(parts) == 5
    labels = []
    for part in parts:
        with h5py.File(part, "r") as f:
            assert f["data"].shape == (2, 3, 4, 5)
            labels += f["label"][...].tolist()
    assert labels == [0] * 5 + [1] * 5


def test_encoded_keeps_each_files_own_format(tmp_path):
    make_folders(tmp_path / "src", classes=("a",), fmt="jpg")
    make_folders(tmp_path / "src", classes=("b",), fmt="png")
    convert_images(tmp_path / "src", tmp_path / "db", encoded=True, shuffle=False)
    for key, datum in read_db(tmp_path / "db"):
        assert datum.encoded and datum.data == (tmp_path / "src" / key[9:]).read_bytes()
    # a resize re-encodes, in the file's own format
    convert_images(tmp_path / "src", tmp_path / "small", encoded=True, resize=(2, 3),
                   shuffle=False)
    for key, datum in read_db(tmp_path / "small"):
        assert datum.data[:3] == (b"\xff\xd8\xff" if key.endswith(".jpg") else b"\x89PN")
        assert datum_to_array(datum)[0].shape == (3, 2, 3)


def test_mean_of_encoded_lmdb_and_hdf5(tmp_path):
    pixels = make_folders(tmp_path / "src")
    want = np.mean(np.stack(list(pixels.values())).astype(np.float64), axis=0)
    convert_images(tmp_path / "src", tmp_path / "enc", encoded=True)
    convert_images(tmp_path / "src", tmp_path / "h5", backend="hdf5")
    for source in (tmp_path / "enc", tmp_path / "h5", tmp_path / "h5" / "list.txt",
                   tmp_path / "h5" / "part_00000.h5"):
        mean = compute_mean(source, progress=lambda n, total: None)
        assert mean.shape == (1, 3, 4, 5)
        np.testing.assert_allclose(mean[0], want, rtol=1e-6)


def test_mean_errors(tmp_path):
    make_folders(tmp_path / "src")
    Image.new("RGB", (9, 9)).save(tmp_path / "src" / "dog" / "big.png")
    convert_images(tmp_path / "src", tmp_path / "db", shuffle=False)
    with pytest.raises(DataError, match=r"dog/big.png.*3×9×9.*3×4×5.*one size"):
        compute_mean(tmp_path / "db")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither an LMDB"):
        compute_mean(tmp_path / "empty")

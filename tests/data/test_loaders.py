"""Batch loaders: what each stream position holds, shuffling per epoch, exact resume."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from netforge.data.loaders import Hdf5Loader, ImageListLoader
from netforge.data.transformer import Transformer


def h5_files(tmp_path, rows=(3, 2, 4)):
    """Files whose rows hold ids 100*file + row (data) and file (label)."""
    paths = []
    for f, n in enumerate(rows):
        path = tmp_path / f"{f}.h5"
        with h5py.File(path, "w") as handle:
            ids = 100 * f + np.arange(n)
            handle.create_dataset("data", data=np.stack([ids, -ids], axis=1).astype(np.int32))
            handle.create_dataset("label", data=np.full(n, f, np.uint8))
        paths.append(path)
    return paths


def stream(loader, batches, start=0):
    out = loader.allocate()
    rows = []
    for k in range(start, start + batches):
        loader.load_batch(k, out)
        rows += out["data"][:, 0].astype(int).tolist()
        assert np.array_equal(out["data"][:, 1], -out["data"][:, 0])  # rows stay whole
        assert np.array_equal(out["label"], out["data"][:, 0] // 100)
    return rows


def test_hdf5_without_shuffle_is_file_then_row_order(tmp_path):
    loader = Hdf5Loader(h5_files(tmp_path), ["data", "label"], 4, seed=0, dtype=np.float32,
                        label="t")
    assert loader.shapes == {"data": (2,), "label": ()}
    order = [0, 1, 2, 100, 101, 200, 201, 202, 203]
    assert stream(loader, 9) == order * 4


def test_hdf5_shuffle_permutes_files_and_rows_per_epoch_without_interleaving(tmp_path):
    loader = Hdf5Loader(h5_files(tmp_path), ["data", "label"], 4, seed=3, dtype=np.float32,
                        label="t", shuffle=True)
    rows = stream(loader, 9)  # 36 rows = 4 epochs of 9
    epochs = [rows[i : i + 9] for i in range(0, 36, 9)]
    everything = sorted([0, 1, 2, 100, 101, 200, 201, 202, 203])
    for epoch in epochs:
        assert sorted(epoch) == everything
        files = [r // 100 for r in epoch]
        runs = [f for i, f in enumerate(files) if i == 0 or files[i - 1] != f]
        assert sorted(runs) == [0, 1, 2]  # each file's rows are contiguous within an epoch
    assert len({tuple(e) for e in epochs}) == 4  # a new order every epoch
    assert len({tuple(r // 100 for r in e) for e in epochs}) > 1  # file order changes too


def test_hdf5_resume_from_state(tmp_path):
    files = h5_files(tmp_path)
    a = Hdf5Loader(files, ["data", "label"], 4, seed=8, dtype=np.float32, label="t",
                   shuffle=True)
    expected = stream(a, 5, start=3)
    state = a.state(3)
    b = Hdf5Loader(files, ["data", "label"], 4, seed=99, dtype=np.float32, label="t",
                   shuffle=True)
    assert stream(b, 5, start=b.restore(state)) == expected


def image_entries(tmp_path, count=5):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        entries.append((f"{i}.png", i))
    return entries


def test_image_list_shuffle_and_resume(tmp_path):
    entries = image_entries(tmp_path)

    def make(seed):
        return ImageListLoader(entries, tmp_path, 2, Transformer(crop_size=3, mirror=True),
                               seed=seed, dtype=np.float32, label="t", list_path="list",
                               shuffle=True)

    loader = make(4)
    out = loader.allocate()
    labels, images = [], []
    for k in range(10):  # 20 records = 4 epochs of 5
        loader.load_batch(k, out)
        labels += out["label"].astype(int).tolist()
        images.append(out["data"].copy())
    epochs = [labels[i : i + 5] for i in range(0, 20, 5)]
    assert all(sorted(e) == [0, 1, 2, 3, 4] for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1

    other = make(11)
    start = other.restore(loader.state(6))
    for k in range(start, 10):
        other.load_batch(k, out)
        np.testing.assert_array_equal(out["data"], images[k])
        assert out["label"].astype(int).tolist() == labels[2 * k : 2 * k + 2]


def test_image_list_without_shuffle_keeps_list_order(tmp_path):
    entries = image_entries(tmp_path, 3)
    loader = ImageListLoader(entries, tmp_path, 2, Transformer(), seed=0, dtype=np.float32,
                             label="t", list_path="list")
    out = loader.allocate()
    labels = []
    for k in range(3):
        loader.load_batch(k, out)
        labels += out["label"].astype(int).tolist()
    assert labels == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("workers", [1, 3])
def test_image_list_workers_give_identical_batches(tmp_path, workers):
    entries = image_entries(tmp_path, 6)
    kwargs = dict(seed=2, dtype=np.float32, label="t", list_path="list", shuffle=True)
    serial = ImageListLoader(entries, tmp_path, 6, Transformer(crop_size=2, mirror=True),
                             workers=1, **kwargs)
    parallel = ImageListLoader(entries, tmp_path, 6, Transformer(crop_size=2, mirror=True),
                               workers=workers, **kwargs)
    a, b = serial.allocate(), parallel.allocate()
    for k in range(3):
        serial.load_batch(k, a)
        parallel.load_batch(k, b)
        np.testing.assert_array_equal(a["data"], b["data"])
    parallel.close()

"""Data-parallel reading: rank r of N takes records r, r+N, ... of each global batch, with
the random draws 1 rank × N·batch would make; the stream state is the same for every rank."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from netforge.data.convert import convert_images
from netforge.data.loaders import DatumLoader, Hdf5Loader, ImageListLoader
from netforge.data.transformer import Transformer


@pytest.fixture(scope="module")
def lmdb_db(tmp_path_factory):
    """30 random 10×10 gray images in 3 classes, shuffled into an LMDB."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        folder = root / "images" / label
        folder.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, size=(10, 10), dtype=np.uint8)).save(
                folder / f"{i}.png")
    convert_images(root / "images", root / "db", gray=True, seed=3)
    return root / "db"


def _rows(loader, index):
    out = loader.allocate()
    loader.load_batch(index, out)
    return out


def _check_shards(make, world=3, batch=4, keys=("data", "label")):
    whole = make(batch * world)
    shards = [make(batch) for _ in range(world)]
    for rank, shard in enumerate(shards):
        shard.shard(rank, world)
    for index in (0, 1, 7):  # 7: past the end of the data, wrapped around
        expected = _rows(whole, index)
        for rank, shard in enumerate(shards):
            got = _rows(shard, index)
            for key in keys:
                np.testing.assert_array_equal(got[key], expected[key][rank::world])
    state = shards[1].state(3)
    assert state == whole.state(3)  # one stream position for every rank and for 1 rank
    for loader in [whole, *shards]:
        loader.close()


def test_datum_loader_shards_records_and_random_crops(lmdb_db):
    transformer = Transformer(scale=1 / 256, crop_size=8, mirror=True, train=True)
    _check_shards(lambda n: DatumLoader(lmdb_db, n, transformer, seed=11, dtype=np.float32,
                                        label="Data"))


def test_image_list_loader_shards_a_shuffled_list(tmp_path):
    rng = np.random.default_rng(1)
    entries = []
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, size=(6, 6), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
        entries.append((f"{i}.png", i % 3))
    transformer = Transformer(crop_size=4, mirror=True, train=True)
    _check_shards(lambda n: ImageListLoader(entries, tmp_path, n, transformer, seed=4,
                                            dtype=np.float32, label="ImageData",
                                            list_path="list.txt", color=False, shuffle=True))


def test_hdf5_loader_shards_rows_across_files(tmp_path):
    import h5py

    rng = np.random.default_rng(2)
    files = []
    for k, rows in enumerate((5, 9)):
        path = tmp_path / f"{k}.h5"
        with h5py.File(path, "w") as handle:
            handle["data"] = rng.normal(size=(rows, 2, 3)).astype(np.float32)
            handle["label"] = np.arange(rows, dtype=np.float32) + 100 * k
        files.append(str(path))
    _check_shards(lambda n: Hdf5Loader(files, ["data", "label"], n, seed=8, dtype=np.float32,
                                       label="HDF5Data", shuffle=True))



"""The data-parallel tests' LMDB, built once."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from netforge.data.convert import convert_images


@pytest.fixture(scope="package")
def lmdb_db(tmp_path_factory):
    """150 random 10×10 gray images in 3 classes, shuffled into an LMDB."""
    root = tmp_path_factory.mktemp("parallel")
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        folder = root / "images" / label
        folder.mkdir(parents=True)
        for i in range(50):
            Image.fromarray(rng.integers(0, 256, size=(10, 10), dtype=np.uint8)).save(
                folder / f"{i}.png")
    convert_images(root / "images", root / "db", gray=True, seed=3)
    return root / "db"


"""HDF5 list files, dataset checks and the appending writer."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from netforge.data.hdf5 import Hdf5Appender, hdf5_sources, inspect_hdf5, read_hdf5_list
from netforge.errors import DataError


def test_list_paths_as_given_or_beside_the_list(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    for name in ("a.h5", "sub/b.h5"):
        with h5py.File(tmp_path / name, "w") as f:
            f.create_dataset("data", data=np.zeros((1, 2)))
    (tmp_path / "sub" / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n\nb.h5\n")
    monkeypatch.chdir(tmp_path)
    assert read_hdf5_list(tmp_path / "sub" / "list.txt") == [tmp_path / "a.h5",
                                                              tmp_path / "sub" / "b.h5"]
    assert hdf5_sources(tmp_path / "a.h5") == [tmp_path / "a.h5"]
    with pytest.raises(DataError, match="no list.txt"):
        hdf5_sources(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="names no files"):
        read_hdf5_list(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_hdf5_list(tmp_path / "nope.txt")


def test_inspect_checks_rank_and_rows(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((4, 2, 3)))
        f.create_dataset("label", data=np.zeros(4))
        f.create_dataset("scalar", data=1.0)
    info = inspect_hdf5(tmp_path / "x.h5", ["data", "label"])
    assert info.rows == 4 and info.row_shapes == {"data": (2, 3), "label": ()}
    with pytest.raises(DataError, match='"scalar" is a scalar'):
        inspect_hdf5(tmp_path / "x.h5", ["data", "scalar"])


def test_appender_grows_datasets(tmp_path):
    writer = Hdf5Appender(tmp_path / "out" / "o.h5")
    writer.append({"data": np.ones((2, 3)), "label": np.zeros(2)})
    writer.append({"data": np.full((1, 3), 2.0), "label": np.ones(1)})
    with pytest.raises(DataError, match="one row shape"):
        writer.append({"data": np.ones((1, 4)), "label": np.ones(1)})
    writer.close()
    with h5py.File(tmp_path / "out" / "o.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][...], [[1, 1, 1], [1, 1, 1], [2, 2, 2]])
        np.testing.assert_array_equal(f["label"][...], [0, 0, 1])

"""LMDB writer (atomic, growing map) and reader (key order, cursor, wrap-around)."""

from __future__ import annotations

import lmdb
import numpy as np
import pytest

from netforge import netforge_pb2 as pb
from netforge.data.stores import LmdbReader, LmdbWriter
from netforge.errors import DataError


def write_caffe_lmdb(path, images, labels, names, order=None):
    """An LMDB as Caffe's convert_imageset writes it, with the lmdb package directly."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in order if order is not None else range(len(images)):
            chw = images[i]
            datum = pb.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2],
                             data=chw.tobytes(), label=int(labels[i]))
            txn.put(f"{i:08d}_{names[i]}".encode(), datum.SerializeToString())
    env.close()


def test_reader_reads_caffe_lmdb_in_key_order(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(3, 2, 2), dtype=np.uint8) for _ in range(12)]
    names = [f"cls/img {i}.png" for i in range(12)]
    write_caffe_lmdb(tmp_path / "db", images, range(12), names, order=rng.permutation(12))
    with LmdbReader(tmp_path / "db") as reader:
        assert len(reader) == 12
        keys = [key for key, _ in reader]
        assert keys == [f"{i:08d}_{names[i]}".encode() for i in range(12)]
        for i in range(12):
            key, value = reader.next()
            datum = pb.Datum.FromString(value)
            assert datum.label == i and datum.data == images[i].tobytes()
        assert reader.position == 0  # wrapped around
        assert reader.next()[0] == keys[0]


def test_reader_seek_and_wrap(tmp_path):
    images = [np.full((1, 1, 1), i, np.uint8) for i in range(5)]
    write_caffe_lmdb(tmp_path / "db", images, range(5), [str(i) for i in range(5)])
    reader = LmdbReader(tmp_path / "db")
    reader.seek(3)
    assert [pb.Datum.FromString(reader.next()[1]).label for _ in range(4)] == [3, 4, 0, 1]
    assert reader.position == 2
    reader.seek(13)  # modulo len
    assert reader.position == 3
    assert pb.Datum.FromString(reader.next()[1]).label == 3
    reader.seek(1)  # backwards
    assert pb.Datum.FromString(reader.next()[1]).label == 1
    reader.close()


def test_reader_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        LmdbReader(tmp_path / "nowhere")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="empty_dir.*no data.mdb"):
        LmdbReader(tmp_path / "empty_dir")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "data.mdb").write_bytes(b"this is not an lmdb file" * 400)
    with pytest.raises(DataError, match="corrupt"):
        LmdbReader(corrupt)


def test_writer_grows_the_map_and_commits_in_chunks(tmp_path):
    path = tmp_path / "db"
    payloads = [bytes([i % 256]) * 4096 for i in range(300)]  # ~1.2 MB into a 64 KiB map
    with LmdbWriter(path, map_size=1 << 16, commit_every=7) as writer:
        for i, payload in enumerate(payloads):
            writer.put(f"{i:08d}", payload)
        assert not path.exists()  # still under its temporary name
    assert writer.map_size > 1 << 16
    with LmdbReader(path) as reader:
        assert len(reader) == 300
        assert [value for _, value in reader] == payloads


def test_writer_failure_leaves_nothing(tmp_path):
    path = tmp_path / "db"
    with pytest.raises(RuntimeError):
        with LmdbWriter(path) as writer:
            writer.put("a", b"1")
            raise RuntimeError("interrupted")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_existing_path_unless_overwrite(tmp_path):
    path = tmp_path / "db"
    with LmdbWriter(path) as writer:
        writer.put("a", b"old")
    with pytest.raises(DataError, match="already exists"):
        LmdbWriter(path)
    with LmdbWriter(path, overwrite=True) as writer:
        writer.put("b", b"new")
    with LmdbReader(path) as reader:
        assert list(reader) == [(b"b", b"new")]


def test_writer_retries_a_full_map_with_twice_the_size(tmp_path, monkeypatch):
    monkeypatch.setattr(LmdbWriter, "_reserve", lambda self, pending: None)  # no growth ahead
    with LmdbWriter(tmp_path / "db", map_size=1 << 16, commit_every=50) as writer:
        for i in range(200):
            writer.put(f"{i:08d}", bytes(4096))
    assert writer.map_size >= 1 << 20  # doubled until 800 KiB fit
    with LmdbReader(tmp_path / "db") as reader:
        assert len(reader) == 200

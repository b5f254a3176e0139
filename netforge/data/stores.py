"""LMDB datasets: a crash-safe writer and a read-only reader with a saveable cursor.

A dataset is a folder holding an LMDB environment (``data.mdb``, ``lock.mdb``); its values
are serialized Datums, read back in key order.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import lmdb

from netforge.errors import DataError

MAX_KEY_BYTES = 511  # LMDB's default maximum key size


def _key_bytes(key) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


class LmdbWriter:
    """Writes key/value records into ``path`` (a folder), atomically as a whole.

    Records go into a temporary folder beside ``path``; ``close(success=True)`` renames it to
    ``path``, ``close(success=False)`` deletes it — so an interrupted conversion never leaves a
    database that looks complete. The map size starts at ``map_size`` and doubles whenever
    LMDB reports the map full; records are committed every ``commit_every`` puts.

    Used as a context manager, the database is kept only when the block ends without error.
    """

    def __init__(
        self,
        path,
        *,
        map_size: int = 1 << 24,
        commit_every: int = 1000,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise DataError(f"{self.path} already exists (pass overwrite to replace it)")
        self.overwrite = overwrite
        self.commit_every = int(commit_every)
        self.map_size = int(map_size)
        self.count = 0
        self._bytes = 0  # key + value bytes committed so far
        self._pending: list[tuple[bytes, bytes]] = []
        self.tmp_path = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        if self.tmp_path.exists():
            shutil.rmtree(self.tmp_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(
                str(self.tmp_path), map_size=self.map_size, subdir=True, meminit=False,
                map_async=True,
            )
        except lmdb.Error as exc:
            raise DataError(f"cannot create an LMDB database at {self.tmp_path}: {exc}") from None
        self._closed = False

    def put(self, key, value: bytes) -> None:
        """Queue one record; every ``commit_every`` records are committed."""
        key = _key_bytes(key)
        if len(key) > MAX_KEY_BYTES:
            raise DataError(f"LMDB key longer than {MAX_KEY_BYTES} bytes: {key[:60]!r}...")
        self._pending.append((key, bytes(value)))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Write the queued records in one transaction, growing the map as needed."""
        if not self._pending:
            return
        self._reserve(sum(len(key) + len(value) for key, value in self._pending))
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                # The aborted transaction wrote nothing; retry with twice the map.
                self.map_size *= 2
                self._env.set_mapsize(self.map_size)
        self._pending.clear()

    def _reserve(self, pending_bytes: int) -> None:
        """Double the map ahead of need: a retry after MapFullError redoes the whole
        transaction. B-tree pages hold a little more than the payload, hence the margin."""
        self._bytes += pending_bytes
        needed = self._bytes * 1.25 + (1 << 20)
        if needed > self.map_size:
            while needed > self.map_size:
                self.map_size *= 2
            self._env.set_mapsize(self.map_size)

    def close(self, success: bool = True) -> None:
        """Finish: keep the database under its final name, or (on failure) delete it."""
        if self._closed:
            return
        self._closed = True
        try:
            if success:
                self.commit()
                self._env.sync(True)
        except BaseException:
            success = False
            raise
        finally:
            self._env.close()
            if success:
                if self.path.exists():
                    shutil.rmtree(self.path)
                os.replace(self.tmp_path, self.path)
            else:
                shutil.rmtree(self.tmp_path, ignore_errors=True)

    def __enter__(self) -> LmdbWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)


# py-lmdb refuses to open one environment twice in a process ("already open"), yet a train
# and a test net often read the same database. Readers therefore share one read-only
# environment per path, closed when its last reader closes.
_SHARED_ENVS: dict[str, list] = {}  # real path -> [environment, reader count]
_SHARED_LOCK = threading.Lock()


def _open_shared_env(path: Path, subdir: bool):
    key = os.path.realpath(path)
    with _SHARED_LOCK:
        entry = _SHARED_ENVS.get(key)
        if entry is None:
            env = lmdb.open(str(path), readonly=True, lock=False, subdir=subdir,
                            readahead=False, max_readers=126)
            entry = _SHARED_ENVS[key] = [env, 0]
        entry[1] += 1
        return key, entry[0]


def _release_shared_env(key: str) -> None:
    with _SHARED_LOCK:
        entry = _SHARED_ENVS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _SHARED_ENVS[key]
            entry[0].close()


class LmdbReader:
    """A read-only view of an LMDB dataset: ``len``, records in key order, a cursor.

    The cursor is a record index (0 .. len-1); ``next()`` returns the record under it and
    advances, wrapping around to the first record after the last. ``position`` may be saved
    and restored (``seek``) so that reading resumes exactly where it was.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"dataset {self.path} does not exist")
        subdir = self.path.is_dir()
        if subdir and not (self.path / "data.mdb").is_file():
            hint = ""
            if (self.path / "CURRENT").is_file():
                hint = " (it looks like a LevelDB database; only LMDB is supported)"
            raise DataError(f"{self.path} is not an LMDB database: no data.mdb in it{hint}")
        self._env = None
        try:
            self._env_key, self._env = _open_shared_env(self.path, subdir)
            self._txn = self._env.begin(buffers=False)
            self._length = int(self._txn.stat()["entries"])
            self._cursor = self._txn.cursor()
        except lmdb.Error as exc:
            if self._env is not None:
                self._env = None
                _release_shared_env(self._env_key)
            raise DataError(
                f"{self.path} is not a readable LMDB database (damaged?): {exc}"
            ) from None
        self._position = 0
        self._valid = self._cursor.first() if self._length else False

    def __len__(self) -> int:
        return self._length

    @property
    def position(self) -> int:
        """Index of the record that ``next()`` returns."""
        return self._position

    def seek(self, index: int) -> None:
        """Put the cursor on record ``index`` (taken modulo ``len``)."""
        if not self._length:
            return
        index = int(index) % self._length
        if index == self._position:
            return
        try:
            if index > self._position and self._valid:
                steps = index - self._position
            else:
                self._cursor.first()
                steps = index
            for _ in range(steps):
                self._cursor.next()
        except lmdb.Error as exc:
            raise DataError(f"{self.path}: cannot read (damaged database?): {exc}") from None
        self._valid = True
        self._position = index

    def next(self) -> tuple[bytes, bytes]:
        """``(key, value)`` under the cursor; the cursor then moves on (wrapping around)."""
        if not self._length:
            raise DataError(f"dataset {self.path} is empty")
        try:
            if not self._valid:
                self._valid = self._cursor.first()
            key, value = self._cursor.item()
            self._position += 1
            if self._position >= self._length or not self._cursor.next():
                self._position = 0
                self._valid = self._cursor.first()
        except lmdb.Error as exc:
            raise DataError(f"{self.path}: cannot read (damaged database?): {exc}") from None
        return key, value

    def __iter__(self):
        """All records once, in key order, from the first (the cursor is not moved)."""
        try:
            yield from self._txn.cursor()
        except lmdb.Error as exc:
            raise DataError(f"{self.path}: cannot read (damaged database?): {exc}") from None

    def first(self) -> tuple[bytes, bytes]:
        """The first record in key order (the cursor is not moved)."""
        for item in self:
            return item
        raise DataError(f"dataset {self.path} is empty")

    def close(self) -> None:
        if self._env is not None:
            try:
                self._txn.abort()
            finally:
                self._env = None
                _release_shared_env(self._env_key)

    def __enter__(self) -> LmdbReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

"""HDF5 datasets as Caffe's HDF5Data layer reads them, and the writers that produce them.

A dataset is a list file (one ``.h5`` path a line) naming files whose datasets are named
after the data layer's tops: typically ``data`` (N, C, H, W) float32 and ``label`` (N,).
Every dataset of a file has the same first dimension (rows); the trailing dimensions agree
across files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netforge.errors import DataError


def _h5py():
    import h5py

    return h5py


# -- reading ---------------------------------------------------------------------------------------
def read_hdf5_list(list_path) -> list[Path]:
    """The ``.h5`` files a list file names, in order.

    Blank lines are skipped; surrounding whitespace is trimmed (as Caffe does). A relative
    path is taken as given when it exists (Caffe resolves it against the working directory),
    else beside the list file. A file that does not exist raises DataError naming list:line.
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        raise DataError(f"HDF5 list file {list_path} does not exist")
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read HDF5 list file {list_path}: {exc}") from None
    files = []
    for lineno, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        path = Path(text).expanduser()
        if not path.is_absolute() and not path.exists():
            path = list_path.parent / path
        if not path.is_file():
            raise DataError(f"{list_path}:{lineno}: HDF5 file {text} does not exist")
        files.append(path)
    if not files:
        raise DataError(f"HDF5 list file {list_path} names no files")
    return files


def hdf5_sources(path) -> list[Path]:
    """``.h5`` files of a dataset given as a list file, a single ``.h5`` file, or a folder
    holding ``list.txt`` (what ``netforge convert --backend hdf5`` writes)."""
    path = Path(path)
    if path.is_dir():
        if (path / "list.txt").is_file():
            return read_hdf5_list(path / "list.txt")
        raise DataError(f"{path} holds no list.txt (not an HDF5 dataset written by convert)")
    if is_hdf5_file(path):
        return [path]
    return read_hdf5_list(path)


def is_hdf5_file(path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class Hdf5File:
    """One file of a dataset: its path, row count, and each dataset's per-row shape."""

    path: Path
    rows: int
    row_shapes: dict[str, tuple[int, ...]]


def inspect_hdf5(path, names) -> Hdf5File:
    """Check that ``path`` holds datasets ``names`` of rank >= 1 with one row count."""
    path = Path(path)
    try:
        with _h5py().File(path, "r") as handle:
            shapes = {}
            for name in names:
                if name not in handle or not hasattr(handle[name], "shape"):
                    have = ", ".join(sorted(handle.keys())) or "nothing"
                    raise DataError(f'{path} has no dataset "{name}" (it holds: {have})')
                shapes[name] = tuple(int(d) for d in handle[name].shape)
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file (damaged?): {exc}") from None
    rows = None
    for name, shape in shapes.items():
        if len(shape) < 1:
            raise DataError(f'{path}: dataset "{name}" is a scalar; it needs a first (row) axis')
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            first = next(iter(shapes))
            raise DataError(
                f'{path}: dataset "{name}" has {shape[0]} rows but "{first}" has {rows}; '
                "all datasets of a file need the same first dimension"
            )
    return Hdf5File(path, int(rows or 0), {n: s[1:] for n, s in shapes.items()})


def load_hdf5(path, names, dtype) -> dict[str, np.ndarray]:
    """Every dataset ``names`` of a file, whole, converted to ``dtype`` (as Caffe loads it)."""
    try:
        with _h5py().File(path, "r") as handle:
            return {name: np.asarray(handle[name][...], dtype=dtype) for name in names}
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: cannot read (damaged HDF5 file?): {exc}") from None
    except (ValueError, TypeError) as exc:  # text datasets, groups where datasets belong
        raise DataError(f"{path}: datasets {list(names)} must be numeric arrays: {exc}") from None


def iter_hdf5_rows(files, name: str = "data", chunk: int = 256):
    """Blocks of dataset ``name`` (at most ``chunk`` rows each) over all ``files``."""
    for path in files:
        try:
            with _h5py().File(path, "r") as handle:
                if name not in handle:
                    raise DataError(f'{path} has no dataset "{name}"')
                dataset = handle[name]
                for start in range(0, dataset.shape[0], chunk):
                    yield path, dataset[start : start + chunk]
        except OSError as exc:
            raise DataError(f"{path} is not a readable HDF5 file (damaged?): {exc}") from None


# -- writing ----------------------------------------------------------------------------------
class Hdf5PartsWriter:
    """Writes images into HDF5 parts of bounded size plus ``list.txt``.

    Each part holds ``data`` (N, C, H, W) float32 and ``label`` (N,) float32, at most
    ``part_bytes`` of image data. ``list.txt`` names each part by its absolute *final* path
    (``final_dir``), as Caffe's HDF5Data layer reads paths as given; netforge's HDF5Data
    also finds them beside the list file when relative.
    """

    def __init__(self, out_dir, final_dir, total: int, part_bytes: int):
        self.out_dir, self.final_dir = Path(out_dir), Path(final_dir)
        self.total, self.part_bytes = int(total), int(part_bytes)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = []
        self._data = None
        self._labels = None
        self._fill = 0

    def add(self, chw: np.ndarray, label: int) -> None:
        if self._data is None:
            rows = max(1, min(self.total, self.part_bytes // (chw.size * 4)))
            self._data = np.empty((rows, *chw.shape), dtype=np.float32)
            self._labels = np.empty((rows,), dtype=np.float32)
        self._data[self._fill] = chw
        self._labels[self._fill] = label
        self._fill += 1
        if self._fill == len(self._data):
            self._flush()

    def _flush(self) -> None:
        if not self._fill:
            return
        name = f"part_{len(self.parts):05d}.h5"
        with _h5py().File(self.out_dir / name, "w") as f:
            f.create_dataset("data", data=self._data[: self._fill])
            f.create_dataset("label", data=self._labels[: self._fill])
        self.parts.append(name)
        self._fill = 0

    def close(self, success: bool = True) -> None:
        if not success:
            return  # the caller removes the whole temporary folder
        self._flush()
        final = self.final_dir.absolute()
        (self.out_dir / "list.txt").write_text("".join(f"{final / p}\n" for p in self.parts))


class Hdf5Appender:
    """An HDF5 file whose datasets grow by rows on every ``append`` (HDF5Output's file).

    The file is created (truncated) on the first append; rows are flushed to disk after
    every append, so the file is readable while the net still runs.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._file = None

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        if self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = _h5py().File(self.path, "w")
            except OSError as exc:
                raise DataError(f"cannot create HDF5 file {self.path}: {exc}") from None
            for name, array in arrays.items():
                self._file.create_dataset(
                    name, shape=(0, *array.shape[1:]), maxshape=(None, *array.shape[1:]),
                    dtype=np.float32, chunks=True,
                )
        for name, array in arrays.items():
            dataset = self._file[name]
            if tuple(array.shape[1:]) != dataset.shape[1:]:
                raise DataError(
                    f'{self.path}: "{name}" rows are {tuple(array.shape[1:])} now but were '
                    f"{dataset.shape[1:]} before; HDF5 output needs one row shape"
                )
            start = dataset.shape[0]
            dataset.resize(start + array.shape[0], axis=0)
            dataset[start:] = array
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

"""Batch loaders behind the data layers: LMDB Datums, image list files, HDF5 files.

Every loader sees its data as an endless *stream* of records and fills batch k with stream
positions ``origin + k*N ... origin + k*N + N-1``. What a position holds, and every random
choice made for batch k (crops, mirrors, the shuffle of an epoch), derive only from the
loader's seed and k. So batches can be loaded ahead in a background thread, rows decoded by
parallel workers in any order, and ``state``/``restore`` resume a stream bit-exactly.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from netforge.data.hdf5 import Hdf5File, inspect_hdf5, load_hdf5
from netforge.data.image_list import load_image
from netforge.data.records import datum_to_array, parse_datum
from netforge.data.stores import LmdbReader
from netforge.data.transformer import Transformer
from netforge.data.workers import RowPool
from netforge.errors import DataError

ROW_THREADS_MIN_ELEMENTS = 16384  # e.g. 3×74×74: below it, a row costs less than a hand-over

# SeedSequence spawn keys: batch k uses (k,); per-epoch shuffles use (_EPOCH, ...).
_EPOCH = 1 << 40


def _size(shape) -> str:
    return "×".join(str(int(d)) for d in shape)


def _fits_first(loader, shape) -> bool:
    """Whether an image of ``shape`` fills a batch row as the first record's did: the same
    size, or one the transformer crops to the same output."""
    return shape == loader.first_shape or (
        loader.transformer.output_shape(shape) == loader.shapes["data"]
    )


class BatchLoader:
    """Base: batch geometry, per-batch generators, resumable stream state.

    Subclasses set ``shapes`` (top key -> per-item shape) and implement ``load_batch``.
    """

    def __init__(self, batch_size: int, seed: int, dtype, *, workers: int | None, label: str):
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        self.label = label
        self.origin = 0
        # Data-parallel sharding (Caffe's): with ``world`` ranks, batch k of the stream is
        # world × batch_size records and rank r keeps rows r, r+world, ...; 1 rank = all.
        self.rank, self.world = 0, 1
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.pool = RowPool(workers, name="netforge-decode")

    def shard(self, rank: int, world: int) -> None:
        """Read as rank ``rank`` of ``world``: stream positions ``start + i*world + rank``
        for row i. The state stays the global stream's, so every rank resumes alike."""
        if not 0 <= rank < world:
            raise DataError(f"{self.label}: rank {rank} is outside a world of {world}")
        self.rank, self.world = int(rank), int(world)

    def row_positions(self, index: int) -> list[int]:
        """Stream positions of this rank's rows of batch ``index``."""
        start = self.start(index)
        return [start + i * self.world + self.rank for i in range(self.batch_size)]

    def row_draws(self, index: int, transformer: Transformer) -> np.ndarray:
        """This rank's rows of the global batch's random draws (crops, mirrors), so that N
        ranks × batch B transform each record exactly as 1 rank × batch N·B would."""
        draws = transformer.batch_draws(self.seed, index, self.batch_size * self.world)
        return draws[self.rank :: self.world]

    def allocate(self) -> dict[str, np.ndarray]:
        """One set of batch buffers, ``(N, *item shape)`` per top key."""
        return {key: np.empty((self.batch_size, *shape), dtype=self.dtype)
                for key, shape in self.shapes.items()}

    def epoch_rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_EPOCH, *key)))

    def start(self, index: int) -> int:
        """Stream position of (global) batch ``index``'s first record."""
        return self.origin + index * self.batch_size * self.world

    def wrap(self, position: int) -> int:
        """How a stream position is reported in the state (subclasses may reduce it)."""
        return position

    def state(self, next_batch: int) -> dict:
        """Where the stream is: the next record to be consumed, the next batch, the seed."""
        return {"position": int(self.wrap(self.start(next_batch))),
                "batch_index": int(next_batch), "seed": int(self.seed)}

    def restore(self, state: dict) -> int:
        """Adopt ``state()``'s dict; returns the batch index that comes next."""
        if "seed" in state:
            self.seed = int(state["seed"])
        next_batch = int(state.get("batch_index", 0))
        self.origin = int(state.get("position", 0)) - next_batch * self.batch_size * self.world
        return next_batch

    def load_batch(self, index: int, out: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.pool.close()

    # A loader is pickled into the worker processes of process_prefetch: threads, cursors
    # and open files stay behind and are made again where it is unpickled.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["pool"] = self.pool.workers
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.pool = RowPool(state["pool"], name="netforge-decode")


class DatumLoader(BatchLoader):
    """Datums of an LMDB in key order, wrapping around, transformed (keys data, label)."""

    def __init__(self, source, batch_size: int, transformer: Transformer, *, seed: int,
                 dtype, label: str, force_color=False, force_gray=False, rand_skip=0,
                 workers=None):
        super().__init__(batch_size, seed, dtype, workers=workers, label=label)
        self.source = Path(source)
        self.transformer = transformer
        self.force_color, self.force_gray = bool(force_color), bool(force_gray)
        self.reader = LmdbReader(self.source)
        self.length = len(self.reader)
        if not self.length:
            raise DataError(f"{label}: dataset {self.source} is empty")
        # Shapes come from the first record, as Caffe's do.
        key, value = self.reader.first()
        first, _ = self._decode(key, value)
        # Rows go to the row threads when each is real work done outside the GIL: Pillow
        # decoding a compressed image, numpy on a large one. Small raw images take
        # microseconds each, mostly numpy's per-call overhead under the GIL: they are
        # decoded and transformed as one batch instead (_raw_batch, apply_batch).
        self.parallel_rows = parse_datum(value).encoded or first.size > ROW_THREADS_MIN_ELEMENTS
        self.first_shape = first.shape
        self.shapes = {"data": transformer.output_shape(first.shape), "label": ()}
        if rand_skip:
            self.origin = int(np.random.default_rng(self.seed).integers(0, rand_skip))

    def wrap(self, position: int) -> int:
        return position % self.length  # the record index of the LMDB cursor

    def _decode(self, key: bytes, value: bytes):
        where = f"{self.source} record {key.decode('utf-8', 'replace')!r}"
        datum = parse_datum(value, where)
        try:
            return datum_to_array(datum, force_color=self.force_color, force_gray=self.force_gray)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None

    def _raw_batch(self, records) -> tuple[np.ndarray | None, list[int]]:
        """The batch's pixels as one (N, C, H, W) uint8 array when every record holds raw
        bytes of the first record's size (the common case: one copy, no per-image arrays);
        (None, []) otherwise, and the row-by-row path decodes them (and names a bad one)."""
        if self.force_color or self.force_gray:
            return None, []
        shape = self.first_shape
        size = shape[0] * shape[1] * shape[2]
        pixels, labels = [], []
        for _, value in records:
            try:
                datum = parse_datum(value)
            except DataError:
                return None, []
            if datum.encoded or len(datum.data) != size or \
                    (datum.channels, datum.height, datum.width) != shape:
                return None, []
            pixels.append(datum.data)
            labels.append(datum.label)
        images = np.frombuffer(b"".join(pixels), dtype=np.uint8).reshape(len(records), *shape)
        return images, labels

    def load_batch(self, index: int, out: dict[str, np.ndarray]) -> None:
        n = self.batch_size
        # The cursor is sequential (and not thread-safe): read the raw records first, then
        # decode and transform them on the workers.
        self.reader.seek(self.wrap(self.start(index) + self.rank))
        records = []
        for i in range(n):
            records.append(self.reader.next())
            if i + 1 < n:
                for _ in range(self.world - 1):  # the other ranks' records
                    self.reader.next()
        draws = self.row_draws(index, self.transformer)
        data, labels = out["data"], out["label"]
        if not self.parallel_rows:
            images, raw_labels = self._raw_batch(records)
            if images is not None:
                self.transformer.apply_batch(images, data, draws)
                labels[...] = raw_labels
                return

        def one(i: int) -> None:
            key, value = records[i]
            image, label = self._decode(key, value)
            if not _fits_first(self, image.shape):
                raise DataError(
                    f"{self.label}: record {key.decode('utf-8', 'replace')!r} of {self.source} "
                    f"is {_size(image.shape)} but the first record is {_size(self.first_shape)}; "
                    "all records must have one size (or set crop_size)"
                )
            self.transformer.apply(image, data[i], draw=draws[i])
            labels[i] = label

        if self.parallel_rows:
            self.pool.run(one, n)
        else:
            for i in range(n):
                one(i)

    def close(self) -> None:
        super().close()
        self.reader.close()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["reader"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.reader = LmdbReader(self.source)


class ImageListLoader(BatchLoader):
    """Images named by a Caffe list file, decoded, resized, transformed (keys data, label).

    With ``shuffle`` every epoch (pass over the list) has its own seeded permutation.
    """

    def __init__(self, entries, root, batch_size: int, transformer: Transformer, *, seed: int,
                 dtype, label: str, list_path, color=True, resize=(0, 0), shuffle=False,
                 rand_skip=0, workers=None):
        super().__init__(batch_size, seed, dtype, workers=workers, label=label)
        if not entries:
            raise DataError(f"{label}: list file {list_path} names no images")
        self.entries = list(entries)
        self.root = Path(root) if root else None
        self.list_path = list_path
        self.transformer = transformer
        self.color, self.resize, self.shuffle = bool(color), tuple(resize), bool(shuffle)
        self._perms: dict[int, np.ndarray] = {}
        if rand_skip:
            self.origin = int(np.random.default_rng(self.seed).integers(0, rand_skip))
        first_rel, _ = self.entry(self.origin)
        first = self._load(first_rel)
        self.first_shape = first.shape
        self.shapes = {"data": transformer.output_shape(first.shape), "label": ()}

    def entry(self, position: int) -> tuple[str, int]:
        """(relative path, label) at a stream position."""
        epoch, offset = divmod(position, len(self.entries))
        if self.shuffle:
            perm = self._perms.get(epoch)
            if perm is None:
                if len(self._perms) > 2:  # batches only ever straddle two epochs
                    self._perms.pop(min(self._perms))
                perm = self.epoch_rng(epoch).permutation(len(self.entries))
                self._perms[epoch] = perm
            offset = int(perm[offset])
        return self.entries[offset]

    def _path(self, rel: str) -> Path:
        return self.root / rel if self.root is not None else Path(rel)

    def _load(self, rel: str) -> np.ndarray:
        try:
            return load_image(self._path(rel), color=self.color, resize=self.resize)
        except DataError as exc:
            raise DataError(f"{self.label}: {exc} (listed in {self.list_path})") from None

    def load_batch(self, index: int, out: dict[str, np.ndarray]) -> None:
        n = self.batch_size
        entries = [self.entry(position) for position in self.row_positions(index)]
        draws = self.row_draws(index, self.transformer)
        data, labels = out["data"], out["label"]

        def one(i: int) -> None:
            rel, label = entries[i]
            image = self._load(rel)
            if not _fits_first(self, image.shape):
                raise DataError(
                    f"{self.label}: image {self._path(rel)} is {_size(image.shape)} but the "
                    f"first image is {_size(self.first_shape)}; set new_height/new_width "
                    "(or crop_size) so that all images have one size"
                )
            self.transformer.apply(image, data[i], draw=draws[i])
            labels[i] = label

        self.pool.run(one, n)


class Hdf5Loader(BatchLoader):
    """Rows of the datasets ``names`` over a list of HDF5 files (keys = dataset names).

    As Caffe: a whole file is loaded into memory at a time, converted to the net's dtype;
    with ``shuffle`` each epoch visits the files in a fresh order and each file's rows in a
    fresh order, never interleaving rows of different files.
    """

    def __init__(self, files, names, batch_size: int, *, seed: int, dtype, label: str,
                 shuffle=False):
        super().__init__(batch_size, seed, dtype, workers=1, label=label)
        self.names = tuple(names)
        self.shuffle = bool(shuffle)
        self.files: list[Hdf5File] = [inspect_hdf5(path, self.names) for path in files]
        first = self.files[0]
        for info in self.files[1:]:
            for name in self.names:
                if info.row_shapes[name] != first.row_shapes[name]:
                    raise DataError(
                        f'{label}: dataset "{name}" has rows of {info.row_shapes[name]} in '
                        f"{info.path} but {first.row_shapes[name]} in {first.path}"
                    )
        self.total = sum(info.rows for info in self.files)
        if not self.total:
            raise DataError(f"{label}: the HDF5 files hold no rows")
        self.shapes = dict(first.row_shapes)
        self._layout: tuple[int, list[int], list[int]] | None = None  # epoch, order, starts
        self._loaded: tuple[tuple[int, int], dict, np.ndarray] | None = None

    def _epoch_layout(self, epoch: int) -> tuple[list[int], list[int]]:
        """(file order, first epoch offset of each file in that order) for an epoch."""
        if self._layout is None or self._layout[0] != epoch:
            order = list(range(len(self.files)))
            if self.shuffle:
                order = [int(i) for i in self.epoch_rng(epoch).permutation(len(self.files))]
            starts = np.cumsum([0] + [self.files[f].rows for f in order])[:-1].tolist()
            self._layout = (epoch, order, starts)
        return self._layout[1], self._layout[2]

    def _file_rows(self, epoch: int, f: int) -> tuple[dict, np.ndarray]:
        """File ``f``'s arrays and its row order in ``epoch`` (loaded once, then cached)."""
        key = (epoch if self.shuffle else 0, f)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # free the previous file before loading the next
            arrays = load_hdf5(self.files[f].path, self.names, self.dtype)
            rows = np.arange(self.files[f].rows)
            if self.shuffle:
                rows = self.epoch_rng(epoch, f + 1).permutation(self.files[f].rows)
            self._loaded = (key, arrays, rows)
        return self._loaded[1], self._loaded[2]

    def load_batch(self, index: int, out: dict[str, np.ndarray]) -> None:
        if self.world == 1:
            self._load_rows(self.start(index), self.batch_size, out)
            return
        # Rows live in memory, so read the global batch and keep this rank's rows.
        whole = {name: np.empty((self.batch_size * self.world, *self.shapes[name]),
                                dtype=self.dtype) for name in self.names}
        self._load_rows(self.start(index), self.batch_size * self.world, whole)
        for name in self.names:
            out[name][...] = whole[name][self.rank :: self.world]

    def _load_rows(self, position: int, count: int, out: dict[str, np.ndarray]) -> None:
        """``count`` consecutive stream rows from ``position`` into ``out``."""
        filled = 0
        while filled < count:
            epoch, offset = divmod(position, self.total)
            order, starts = self._epoch_layout(epoch)
            slot = bisect.bisect_right(starts, offset) - 1
            f = order[slot]
            row = offset - starts[slot]
            take = min(count - filled, self.files[f].rows - row)
            arrays, rows = self._file_rows(epoch, f)
            picked = rows[row : row + take]
            for name in self.names:
                out[name][filled : filled + take] = arrays[name][picked]
            filled += take
            position += take

"""``netforge convert`` and ``netforge mean``: image folders or a list file -> datasets.

SOURCE is a folder with one sub-folder per class (label = index of the class name in sorted
order), or, with a list file, the root its relative paths are under. DEST receives an LMDB
of Datums (keys ``%08d_<relative path>``, BGR (C, H, W) uint8 or encoded bytes) or HDF5
parts with ``list.txt``, plus ``labels.txt``. With a validation fraction, DEST/train and
DEST/val are written instead, split per class. Everything is written under a temporary
name and renamed to DEST only when complete.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netforge.data.hdf5 import Hdf5PartsWriter, hdf5_sources, inspect_hdf5, iter_hdf5_rows
from netforge.data.image_list import (
    check_resize,
    load_image,
    parse_list_file,
    scan_class_folders,
)
from netforge.data.records import (
    array_to_datum,
    datum_to_array,
    decode_image_bytes,
    encode_image,
    parse_datum,
)
from netforge.data.stores import MAX_KEY_BYTES, LmdbReader, LmdbWriter
from netforge.errors import ConfigError, DataError

DEFAULT_SEED = 0
HDF5_PART_BYTES = 256 << 20  # float32 bytes of image data per .h5 part


@dataclass
class ConvertSummary:
    """What a conversion wrote: records per split, skipped images and why, labels."""

    dest: Path
    backend: str
    counts: dict[str, int] = field(default_factory=dict)  # split ("" = single) -> records
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    labels: list[str] = field(default_factory=list)
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) when all images agree
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        parts = ", ".join(f"{name or 'all'}: {n}" for name, n in self.counts.items())
        shape = "×".join(map(str, self.image_shape)) if self.image_shape else "varying"
        lines = [
            f"wrote {self.written} images ({parts}) to {self.dest} [{self.backend}], "
            f"{len(self.labels)} classes, size {shape}, {self.seconds:.1f}s"
            + (f" ({self.written / self.seconds:.0f} images/s)" if self.seconds > 0 else "")
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable image(s):")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Options:
    root: Path
    color: bool
    resize: tuple[int, int]
    encoded: bool
    encode_type: str | None  # None: keep each file's own format where possible
    want_array: bool


def convert_images(
    source,
    dest,
    *,
    list_file=None,
    backend: str = "lmdb",
    resize: tuple[int, int] = (0, 0),
    gray: bool = False,
    shuffle: bool = True,
    seed: int = DEFAULT_SEED,
    encoded: bool = False,
    encode_type: str | None = None,
    check_size: bool = False,
    val_fraction: float = 0.0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> ConvertSummary:
    """Convert images into a dataset at ``dest``; returns a ConvertSummary.

    ``resize=(H, W)`` resizes bilinearly ((0, 0) keeps sizes); ``gray`` stores 1 channel,
    else 3 (BGR). ``encoded`` stores compressed bytes (as Caffe's convert_imageset): the
    file's own bytes when it already is of ``encode_type`` (png, jpg; None = the file's own
    format) at the stored size and channel count, else the image re-encoded (as
    ``encode_type``, or the file's format when that is png/jpg, else png).
    ``progress(n_done, n_total)`` is called after every image.
    Unreadable images are skipped and listed in the summary.
    """
    started = time.perf_counter()
    source, dest = Path(source), Path(dest)
    backend = backend.lower()
    if backend == "leveldb":
        raise DataError("the LevelDB backend is not supported; use --backend lmdb or hdf5")
    if backend not in ("lmdb", "hdf5"):
        raise DataError(f'unknown backend "{backend}"; use lmdb or hdf5')
    if encode_type is not None:
        encode_type = {"jpeg": "jpg"}.get(encode_type.lower(), encode_type.lower())
        if encode_type not in ("png", "jpg"):
            raise DataError(f'unknown encode type "{encode_type}"; use png or jpg')
    if encoded and backend == "hdf5":
        raise DataError("--encoded applies to LMDB only; HDF5 stores decoded float pixels")
    resize = check_resize(resize)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    if dest.exists() and not overwrite:
        raise DataError(f"{dest} already exists; pass --overwrite to replace it")
    if not source.is_dir():
        raise DataError(f"source folder {source} does not exist or is not a folder")

    if list_file is not None:
        entries = parse_list_file(list_file)
        if not entries:
            raise DataError(f"list file {list_file} names no images")
        labels = [str(v) for v in sorted({label for _, label in entries})]
    else:
        entries, labels = scan_class_folders(source)

    summary = ConvertSummary(dest=dest, backend=backend, labels=labels)
    workers = workers or min(8, os.cpu_count() or 1)
    if val_fraction > 0:
        # The split is chosen per class among the images that can be read: an unreadable
        # file must not take a validation slot (the split would come out short).
        readable = list(_ordered_map(lambda e: _probe(source / e[0]), entries, workers))
        summary.skipped += [(e[0], why) for e, why in zip(entries, readable, strict=True) if why]
        entries = [e for e, why in zip(entries, readable, strict=True) if not why]
    rng = np.random.default_rng(seed)
    splits = _split(entries, float(val_fraction), rng)
    if shuffle:
        splits = {name: [items[i] for i in rng.permutation(len(items))]
                  for name, items in splits.items()}

    options = _Options(
        root=source, color=not gray, resize=resize, encoded=bool(encoded),
        encode_type=encode_type, want_array=backend == "hdf5",
    )
    state = {"done": 0, "total": len(entries), "shape": None, "uniform": True}

    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for name, items in splits.items():
            if name:
                tmp.mkdir(parents=True, exist_ok=True)
            out_dir = tmp / name if name else tmp
            final_dir = dest / name if name else dest
            summary.counts[name] = _write_split(
                items, out_dir, final_dir, backend, options, check_size, workers,
                progress, state, summary,
            )
        if not summary.written:
            raise DataError(f"no image under {source} could be read; nothing was written")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
        if dest.exists():
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.image_shape = state["shape"] if state["uniform"] else None
    summary.seconds = time.perf_counter() - started
    return summary


def _probe(path: Path) -> str:
    """"" when ``path`` looks like a readable image (its header and, for PNG, its chunk
    checksums verify), else why not; cheaper than decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
    except FileNotFoundError:
        return "no such image file"
    except UnidentifiedImageError:
        return "cannot decode image: not an image format Pillow reads"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for bad files
        return f"cannot decode image: {exc or type(exc).__name__}"
    return ""


def _split(entries, val_fraction: float, rng) -> dict[str, list[tuple[str, int]]]:
    """{"": entries}, or {"train": ..., "val": ...} chosen per class at random (seeded).

    Each split keeps the entries' original order; every class with at least two images
    keeps at least one on each side.
    """
    if val_fraction <= 0:
        return {"": list(entries)}
    by_class: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(entries):
        by_class.setdefault(label, []).append(index)
    is_val = np.zeros(len(entries), dtype=bool)
    for label in sorted(by_class):
        members = by_class[label]
        n_val = int(round(val_fraction * len(members)))
        if len(members) > 1:
            n_val = min(max(n_val, 1), len(members) - 1)
        chosen = rng.permutation(len(members))[:n_val]
        is_val[np.asarray(members)[chosen]] = True
    return {
        "train": [e for e, v in zip(entries, is_val, strict=True) if not v],
        "val": [e for e, v in zip(entries, is_val, strict=True) if v],
    }


def _key(index: int, rel: str) -> str:
    key = f"{index:08d}_{rel}"
    raw = key.encode("utf-8")
    if len(raw) > MAX_KEY_BYTES:  # keep the order-giving index, cut the path's start
        tail = raw[-(MAX_KEY_BYTES - 9) :].decode("utf-8", "ignore")
        key = f"{index:08d}_{tail}"
    return key


def _read_one(task: tuple[str, int], options: _Options):
    """Decode one image; returns ``(shape, payload)`` or ``(None, reason)`` when unreadable.

    payload: serialized Datum (LMDB) or the (C, H, W) uint8 array (HDF5).
    """
    rel, label = task
    path = options.root / rel
    try:
        if not options.encoded:
            chw = load_image(path, color=options.color, resize=options.resize)
            if options.want_array:
                return chw.shape, chw
            return chw.shape, array_to_datum(chw, label).SerializeToString()
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        native = decode_image_bytes(raw, color=None, where=str(path))
        target_channels = 3 if options.color else 1
        ext = {"jpeg": "jpg"}.get(path.suffix.lower().lstrip("."), path.suffix.lower()[1:])
        kind = options.encode_type or (ext if ext in ("png", "jpg") else "png")
        if ext == kind and not any(options.resize) and native.shape[0] == target_channels:
            # The file already is what we would write: store its bytes unchanged.
            datum = array_to_datum(native, label, encoded_bytes=raw)
            return native.shape, datum.SerializeToString()
        chw = load_image(path, color=options.color, resize=options.resize)
        payload = encode_image(chw, kind)
        return chw.shape, array_to_datum(chw, label, encoded_bytes=payload).SerializeToString()
    except DataError as exc:
        return None, _reason(exc, path)


def _reason(exc: DataError, path: Path) -> str:
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _ordered_map(fn, items, workers: int):
    """``fn`` over ``items`` on a thread pool, results in input order, bounded look-ahead."""
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="netforge-convert")
    try:
        pending = deque()
        feed = iter(items)
        for item in feed:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * 4:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(feed, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def _write_split(items, out_dir, final_dir, backend, options, check_size, workers,
                 progress, state, summary) -> int:
    if backend == "lmdb":
        sink = LmdbWriter(out_dir)
    else:
        sink = Hdf5PartsWriter(out_dir, final_dir, len(items), HDF5_PART_BYTES)
    written = 0
    try:
        results = _ordered_map(lambda task: _read_one(task, options), items, workers)
        for index, ((rel, label), (shape, payload)) in enumerate(
            zip(items, results, strict=True)
        ):
            state["done"] += 1
            if shape is None:
                summary.skipped.append((rel, payload))
            else:
                if state["shape"] is None:
                    state["shape"] = shape
                    state["first"] = rel
                elif shape != state["shape"]:
                    if check_size or backend == "hdf5":
                        raise DataError(
                            f"{rel} is {'×'.join(map(str, shape))} but {state['first']} is "
                            f"{'×'.join(map(str, state['shape']))}; all images must have one "
                            "size (resize them with --resize-height/--resize-width)"
                        )
                    state["uniform"] = False
                if backend == "lmdb":
                    sink.put(_key(index, rel), payload)
                else:
                    sink.add(payload, label)
                written += 1
            if progress is not None:
                progress(state["done"], state["total"])
    except BaseException:
        sink.close(success=False)
        raise
    sink.close(success=True)
    return written


def compute_mean(
    db_path, *, progress: Callable[[int, int], None] | None = None, workers: int | None = None
) -> np.ndarray:
    """The pixel-wise mean (1, C, H, W) float32 of all images of a dataset.

    ``db_path``: an LMDB folder (raw or encoded Datums, decoded on ``workers`` threads), or
    an HDF5 dataset (a folder with ``list.txt``, a list file, or one ``.h5`` file) whose
    ``data`` rows are averaged. Every image must have the size of the first one.
    """
    db_path = Path(db_path)
    if db_path.is_dir() and not (db_path / "data.mdb").exists() \
            and not (db_path / "list.txt").exists() and (db_path / "train").is_dir():
        raise DataError(
            f"{db_path} holds train/ and val/ datasets; give {db_path / 'train'} for the mean"
        )
    if db_path.is_dir() and (db_path / "data.mdb").exists():
        return _lmdb_mean(db_path, progress, workers or min(8, os.cpu_count() or 1))
    if db_path.is_dir() and not (db_path / "list.txt").exists():
        raise DataError(f"{db_path} is neither an LMDB (no data.mdb) nor an HDF5 dataset "
                        "(no list.txt)")
    return _hdf5_mean(db_path, progress)


class _MeanAccumulator:
    """Sums images of one size in float64 and checks each against the first."""

    def __init__(self):
        self.total = None
        self.count = 0
        self.first = ""

    def add(self, images: np.ndarray, where: str) -> None:
        """``images``: (C, H, W) or a block (n, C, H, W)."""
        block = images if images.ndim == 4 else images[None]
        if self.total is None:
            self.total = np.zeros(block.shape[1:], dtype=np.float64)
            self.first = where
        elif block.shape[1:] != self.total.shape:
            raise DataError(
                f"{where} is {'×'.join(map(str, block.shape[1:]))} but {self.first} is "
                f"{'×'.join(map(str, self.total.shape))}; a mean needs images of one size"
            )
        self.total += block.sum(axis=0, dtype=np.float64)
        self.count += block.shape[0]

    def mean(self, db_path) -> np.ndarray:
        if not self.count:
            raise DataError(f"dataset {db_path} is empty; cannot compute a mean")
        return (self.total / self.count).astype(np.float32)[None]


def _lmdb_mean(db_path: Path, progress, workers: int) -> np.ndarray:
    acc = _MeanAccumulator()
    with LmdbReader(db_path) as reader:
        total = len(reader)

        def decode(item):
            key, value = item
            where = f"{db_path} record {key.decode('utf-8', 'replace')!r}"
            return where, datum_to_array(parse_datum(value, where))[0]

        for n, (where, image) in enumerate(_ordered_map(decode, reader, workers), start=1):
            acc.add(image, where)
            if progress is not None:
                progress(n, total)
    return acc.mean(db_path)


def _hdf5_mean(db_path: Path, progress) -> np.ndarray:
    files = hdf5_sources(db_path)
    total = sum(inspect_hdf5(path, ["data"]).rows for path in files)
    acc = _MeanAccumulator()
    for path, block in iter_hdf5_rows(files, "data"):
        if block.ndim != 4:
            raise DataError(f'{path}: dataset "data" is {block.ndim - 1}-D per row; a mean '
                            "needs C×H×W images")
        if not np.issubdtype(block.dtype, np.number):
            raise DataError(f'{path}: dataset "data" holds {block.dtype} values, not numbers')
        acc.add(block, str(path))
        if progress is not None:
            progress(acc.count, total)
    return acc.mean(db_path)

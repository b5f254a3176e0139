"""Caffe's extract_features tool: named blobs of a net, batch after batch, into datasets.

    extract_features(net, ["fc7", "prob"], ["fc7_db", "prob_db"], batches=10, fmt="lmdb")

Each blob gets its own output. ``lmdb``: one Datum per sample, keyed ``%010d`` (as Caffe's
tool), the features in ``float_data`` with Caffe's legacy channels/height/width of the blob;
``hdf5``: one file with a ``data`` dataset (samples, ...); ``npy``: one array file. Every
output is written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from netforge import backend
from netforge import netforge_pb2 as pb
from netforge.data.stores import LmdbWriter
from netforge.errors import ConfigError, DataError
from netforge.files import atomic_path

log = logging.getLogger("netforge")

FORMATS = ("lmdb", "hdf5", "npy")


def _legacy_chw(shape) -> tuple[int, int, int]:
    """Caffe's Blob::channels/height/width of a (N, ...) blob, per sample."""
    dims = list(shape[1:]) + [1, 1, 1]
    if len(shape) > 4:
        raise ConfigError(f"blob of shape {tuple(shape)}: Caffe's Datum holds at most 3 axes "
                          "per sample; use --format hdf5 or npy")
    return int(dims[0]), int(dims[1]), int(dims[2])


def extract_features(net, blob_names, outputs, batches: int, fmt: str = "lmdb",
                     overwrite: bool = False, progress=None) -> dict[str, tuple]:
    """Forward ``batches`` times; returns {blob: shape of everything written}."""
    if fmt not in FORMATS:
        raise ConfigError(f'unknown format "{fmt}"; use {", ".join(FORMATS)}')
    if len(blob_names) != len(outputs):
        raise ConfigError(f"{len(blob_names)} blob name(s) but {len(outputs)} output(s); give "
                          "one output per blob")
    missing = [name for name in blob_names if name not in net.blobs]
    if missing:
        raise ConfigError(f'net "{net.name}" has no blob(s) {", ".join(missing)} '
                          f"(blobs: {', '.join(net.blobs)})")
    for out in outputs:
        if Path(out).exists() and not overwrite:
            raise DataError(f"{out} already exists; pass --overwrite to replace it")
    net.plan.check_readable(blob_names)
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in blob_names}
    writers = {}
    if fmt == "lmdb":
        writers = {name: LmdbWriter(out, overwrite=overwrite)
                   for name, out in zip(blob_names, outputs, strict=True)}
    written = 0  # samples so far (keys continue across batches, as Caffe's)
    try:
        for batch in range(batches):
            net.forward_range(0, len(net.layers) - 1)
            rows = 0
            for name in blob_names:
                values = np.array(backend.to_host(net.blobs[name].data), dtype=np.float32)
                values = values.reshape(1) if values.ndim == 0 else values
                rows = len(values)
                if fmt != "lmdb":
                    chunks[name].append(values)
                    continue
                channels, height, width = _legacy_chw(values.shape)
                for i, row in enumerate(values):
                    datum = pb.Datum(channels=channels, height=height, width=width)
                    datum.float_data.extend(row.ravel().tolist())
                    writers[name].put(f"{written + i:010d}", datum.SerializeToString())
            written += rows
            log.info("Extracted features of %d query images for %d feature blob(s)", written,
                     len(blob_names))
            if progress is not None:
                progress(batch + 1, batches)
    except BaseException:
        for writer in writers.values():
            writer.close(success=False)
        raise
    shapes = {}
    for name, out in zip(blob_names, outputs, strict=True):
        if fmt == "lmdb":
            writers[name].close(success=True)
            shapes[name] = (written, *net.blobs[name].shape[1:])
            continue
        array = np.concatenate(chunks[name])
        shapes[name] = array.shape
        with atomic_path(out) as tmp:
            if fmt == "npy":
                with open(tmp, "wb") as handle:
                    np.save(handle, array)
            else:
                import h5py

                with h5py.File(tmp, "w") as handle:
                    handle.create_dataset("data", data=array)
    return shapes

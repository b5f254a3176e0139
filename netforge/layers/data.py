"""Layers that feed the net: Input, DummyData, MemoryData, and the prefetching readers Data
(LMDB), ImageData (list file) and HDF5Data; plus HDF5Output, which writes blobs to a file.

The reading itself lives in ``netforge.data.loaders``; the layers here map parameters to a
loader and copy its prefetched batches into their tops.
"""

from __future__ import annotations

import logging

import numpy as np

from netforge import backend
from netforge import netforge_pb2 as pb
from netforge.data.hdf5 import Hdf5Appender, read_hdf5_list
from netforge.data.image_list import parse_list_file
from netforge.data.loaders import BatchLoader, DatumLoader, Hdf5Loader, ImageListLoader
from netforge.data.prefetch import Prefetcher
from netforge.data.process_prefetch import ProcessPrefetcher
from netforge.data.records import load_mean_file
from netforge.data.transformer import Transformer
from netforge.data.workers import default_processes
from netforge.errors import ConfigError, DataError
from netforge.fillers import check_filler, fill
from netforge.layers.base import Layer
from netforge.layers.registry import register

log = logging.getLogger("netforge")


def _copy_to_top(top_data, host: np.ndarray) -> None:
    """Copy a host batch into a top blob's array (numpy or CuPy) without allocating."""
    if isinstance(top_data, np.ndarray):
        np.copyto(top_data, host, casting="unsafe")
    else:
        top_data.set(np.ascontiguousarray(host, dtype=top_data.dtype))


def _per_top(items, num_tops: int, what: str, label: str) -> list:
    """Caffe's rule for repeated per-top settings: one for all tops, or exactly one per top."""
    items = list(items)
    if len(items) == 1:
        return items * num_tops
    if len(items) != num_tops:
        raise ConfigError(
            f"{label}: {len(items)} {what} given for {num_tops} tops; give 1 or one per top"
        )
    return items


@register("Input")
class InputLayer(Layer):
    """Deploy-time placeholders: tops of ``input_param.shape`` that the caller fills."""

    num_bottoms = 0
    min_tops = 1
    has_backward = False

    def setup(self, bottom_shapes):
        shapes = self.param.input_param.shape
        if not len(shapes):
            raise ConfigError(f"{self.label}: input_param needs a shape")
        dims = [tuple(int(d) for d in s.dim) for s in shapes]
        self.shapes = _per_top(dims, len(self.param.top), "shapes", self.label)

    def reshape(self, bottom_shapes):
        return list(self.shapes)

    def forward(self, bottoms, tops):
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """Constant or random tops from fillers (``dummy_data_param``).

    Fillers: none (constant 0), one for all tops, or one per top. A constant filler fills its
    top once; any other filler refills it on every forward.
    """

    num_bottoms = 0
    min_tops = 1
    has_backward = False

    def setup(self, bottom_shapes):
        p = self.param.dummy_data_param
        num_tops = len(self.param.top)
        legacy = [p.num, p.channels, p.height, p.width]
        if len(p.shape) and any(len(f) for f in legacy):
            raise ConfigError(f"{self.label}: give either shape or num/channels/height/width")
        if len(p.shape):
            self.shapes = _per_top(
                [tuple(int(d) for d in s.dim) for s in p.shape], num_tops, "shapes", self.label
            )
        elif all(len(f) for f in legacy):
            columns = [_per_top(f, num_tops, "legacy dims", self.label) for f in legacy]
            self.shapes = [tuple(int(col[i]) for col in columns) for i in range(num_tops)]
        else:
            raise ConfigError(
                f"{self.label}: dummy_data_param needs shape (or all of num, channels, "
                "height, width)"
            )
        fillers = list(p.data_filler) or [pb.FillerParameter(type="constant", value=0)]
        self.fillers = _per_top(fillers, num_tops, "data_filler entries", self.label)
        for filler in self.fillers:
            try:
                check_filler(filler)
            except ConfigError as exc:
                raise ConfigError(f"{self.label}: {exc}") from None
        self.refill = [f.type != "constant" for f in self.fillers]
        self._filled: list[object] = [None] * num_tops

    def reshape(self, bottom_shapes):
        return list(self.shapes)

    def forward(self, bottoms, tops):
        for i, top in enumerate(tops):
            # A constant top is filled once (again only if its array was replaced).
            if self.refill[i] or self._filled[i] is not top.data:
                values = fill(self.fillers[i], top.shape, self.ctx.rng, top.dtype)
                _copy_to_top(top.data, values)
                self._filled[i] = top.data


# -- prefetching readers --------------------------------------------------------------------------
class PrefetchingLayer(Layer):
    """Base of Data, ImageData and HDF5Data: a loader filled by a background thread.

    ``prefetch`` batches are kept ready (Caffe's free/full queues); the thread starts on the
    first forward. ``get_state``/``set_state`` save and restore the stream position so that
    a resumed run continues with exactly the batches it would have seen.
    """

    num_bottoms = 0
    has_backward = False

    loader: BatchLoader | None = None
    depth = 4
    # Worker processes that decode into shared memory (0: the prefetch thread); None: the
    # machine's default (``default_processes``). HDF5Data keeps the thread: its rows are
    # already in memory and a copy is all it does.
    processes: int | None = None
    _prefetcher: Prefetcher | ProcessPrefetcher | None = None
    _next_batch = 0

    def top_keys(self) -> list[str]:
        """The loader's batch key for each top, in top order."""
        return ["data", "label"][: len(self.param.top)]

    def draw_seed(self) -> int:
        """Everything random about the layer derives from one seed drawn from the net's rng."""
        return int(self.ctx.rng.integers(0, 2**63 - 1))

    def reshape(self, bottom_shapes):
        n = self.loader.batch_size
        return [(n, *self.loader.shapes[key]) for key in self.top_keys()]

    def forward(self, bottoms, tops):
        if self._prefetcher is None:
            if self.loader is None:
                raise DataError(f"{self.label}: the layer is closed")
            self._prefetcher = self._start_prefetch()
        batch = self._prefetcher.next()
        self._next_batch = self._prefetcher.last_index + 1
        for top, key in zip(tops, self.top_keys(), strict=True):
            _copy_to_top(top.data, batch[key])

    def _start_prefetch(self) -> Prefetcher | ProcessPrefetcher:
        processes = default_processes() if self.processes is None else self.processes
        if processes > 0:
            return ProcessPrefetcher(self.loader, self.depth, workers=processes,
                                     start=self._next_batch, name=self.label)
        return Prefetcher(self.loader.load_batch, self.depth, allocate=self.loader.allocate,
                          start=self._next_batch, name=f"prefetch-{self.name}")

    def shard(self, rank: int, world: int) -> None:
        """Data-parallel reading: rank ``rank`` of ``world`` takes records r, r+N, ... of
        each global batch (see ``BatchLoader.shard``); batches not yet read are dropped."""
        self._stop_prefetch()
        self.loader.shard(rank, world)

    def get_state(self) -> dict:
        """Where the stream is: ``position`` (next record), ``batch_index``, ``seed``."""
        return self.loader.state(self._next_batch)

    def set_state(self, state: dict) -> None:
        """Resume from ``get_state()``'s dict: the next forward returns the batch that
        would have followed when the state was taken."""
        self._stop_prefetch()
        self._next_batch = self.loader.restore(state)

    def _stop_prefetch(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def close(self) -> None:
        self._stop_prefetch()
        if self.loader is not None:
            self.loader.close()
            self.loader = None


def _transform_param(layer_param, legacy) -> pb.TransformationParameter:
    """transform_param, with the deprecated scale/mean_file/crop_size/mirror of ``legacy``
    (data_param or image_data_param) moved into it, as Caffe's upgrade does."""
    tp = pb.TransformationParameter()
    tp.CopyFrom(layer_param.transform_param)
    for name in ("scale", "mean_file", "crop_size", "mirror"):
        if legacy.HasField(name) and not tp.HasField(name):
            setattr(tp, name, getattr(legacy, name))
    return tp


def _make_transformer(layer: Layer, tp: pb.TransformationParameter) -> Transformer:
    if tp.force_color and tp.force_gray:
        raise ConfigError(f"{layer.label}: force_color and force_gray exclude each other")
    mean = None
    if tp.mean_file:
        if len(tp.mean_value):
            raise ConfigError(f"{layer.label}: give mean_file or mean_value, not both")
        mean = _with_label(layer, lambda: load_mean_file(layer.resolve_path(tp.mean_file)))
    elif len(tp.mean_value):
        mean = list(tp.mean_value)
    return Transformer(scale=tp.scale, mean=mean, crop_size=tp.crop_size, mirror=tp.mirror,
                       train=layer.phase == "TRAIN")


def _with_label(layer: Layer, make):
    """Run ``make()``, prefixing a DataError's message with the layer's label."""
    try:
        return make()
    except DataError as exc:
        text = str(exc)
        if text.startswith(layer.label):
            raise
        raise DataError(f"{layer.label}: {text}") from None


@register("Data")
class DataLayer(PrefetchingLayer):
    """Batches of Datums from an LMDB dataset: tops data (N, C, h, w) and optional label (N,).

    Records are read in key order, wrapping around at the end (shuffle at conversion time),
    decoded when encoded (BGR) and preprocessed by ``transform_param`` on parallel workers
    while ``prefetch`` batches wait ready. Batch k holds records ``origin + k*N ...`` (modulo
    the dataset size); its crops and mirrors come from a generator seeded by (layer seed, k).
    """

    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes):
        dp = self.param.data_param
        if dp.HasField("backend") and dp.backend == pb.DataParameter.LEVELDB:
            raise ConfigError(
                f"{self.label}: backend LEVELDB is not supported; only LMDB is "
                "(convert the images with `netforge convert` and set backend: LMDB)"
            )
        if not dp.source:
            raise ConfigError(f"{self.label}: data_param.source is not set")
        if dp.batch_size <= 0:
            raise ConfigError(f"{self.label}: data_param.batch_size must be positive")
        self.depth = max(1, int(dp.prefetch))
        self.source = self.resolve_path(dp.source)
        tp = _transform_param(self.param, dp)
        transformer = _make_transformer(self, tp)
        self.loader = _with_label(self, lambda: DatumLoader(
            self.source, dp.batch_size, transformer, seed=self.draw_seed(), dtype=self.dtype,
            label=self.label, force_color=tp.force_color or dp.force_encoded_color,
            force_gray=tp.force_gray, rand_skip=dp.rand_skip,
        ))


@register("ImageData")
class ImageDataLayer(PrefetchingLayer):
    """Images named by a list file (``path label`` a line), decoded to BGR: tops data and
    label. ``root_folder`` prefixes the paths, ``new_height``/``new_width`` resize (bilinear),
    ``is_color: false`` reads one gray channel, ``shuffle`` reorders the list every epoch.
    """

    num_tops = 2

    def setup(self, bottom_shapes):
        p = self.param.image_data_param
        if not p.source:
            raise ConfigError(f"{self.label}: image_data_param.source is not set")
        if p.batch_size <= 0:
            raise ConfigError(f"{self.label}: image_data_param.batch_size must be positive")
        if (p.new_height == 0) != (p.new_width == 0):
            raise ConfigError(
                f"{self.label}: give both new_height and new_width, or neither "
                f"(got {p.new_height}×{p.new_width})"
            )
        source = self.resolve_path(p.source)
        root = self.resolve_path(p.root_folder) if p.root_folder else None
        transformer = _make_transformer(self, _transform_param(self.param, p))

        def make():
            entries = parse_list_file(source)
            return ImageListLoader(
                entries, root, p.batch_size, transformer, seed=self.draw_seed(),
                dtype=self.dtype, label=self.label, list_path=source, color=p.is_color,
                resize=(p.new_height, p.new_width), shuffle=p.shuffle, rand_skip=p.rand_skip,
            )

        self.loader = _with_label(self, make)


@register("HDF5Data")
class HDF5DataLayer(PrefetchingLayer):
    """Rows of HDF5 files named by a list file; each top is the dataset of the same name.

    Tops are ``(batch_size, *rows' shape)`` of any rank; integer datasets are converted to
    the net's float type. No transformation (Caffe refuses transform_param here).
    """

    min_tops = 1
    processes = 0

    def setup(self, bottom_shapes):
        p = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            raise ConfigError(f"{self.label}: HDF5Data does not transform data; "
                              "remove transform_param (preprocess when writing the files)")
        if not p.source:
            raise ConfigError(f"{self.label}: hdf5_data_param.source is not set")
        if p.batch_size <= 0:
            raise ConfigError(f"{self.label}: hdf5_data_param.batch_size must be positive")
        source = self.resolve_path(p.source)
        self.loader = _with_label(self, lambda: Hdf5Loader(
            read_hdf5_list(source), list(self.param.top), p.batch_size, seed=self.draw_seed(),
            dtype=self.dtype, label=self.label, shuffle=p.shuffle,
        ))

    def top_keys(self) -> list[str]:
        return list(self.param.top)


# -- arrays in, arrays out ------------------------------------------------------------------------
@register("MemoryData")
class MemoryDataLayer(Layer):
    """Batches from arrays handed over with ``set_input_arrays(data, labels)`` (pycaffe's).

    data is (n, channels, height, width), labels n values, n a multiple of batch_size; each
    forward returns the next batch_size rows, wrapping around. No transformation is applied.
    """

    num_bottoms = 0
    num_tops = 2
    has_backward = False

    def setup(self, bottom_shapes):
        p = self.param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.item_shape = (int(p.channels), int(p.height), int(p.width))
        if self.batch_size <= 0 or min(self.item_shape) <= 0:
            raise ConfigError(
                f"{self.label}: memory_data_param needs positive batch_size, channels, height "
                f"and width (got {self.batch_size}, {', '.join(map(str, self.item_shape))})"
            )
        if self.param.HasField("transform_param"):
            log.warning("%s does not transform the arrays given to set_input_arrays", self.label)
        self._data: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._position = 0

    def reshape(self, bottom_shapes):
        return [(self.batch_size, *self.item_shape), (self.batch_size,)]

    def set_input_arrays(self, data, labels) -> None:
        """Use ``data`` (n, C, H, W) and ``labels`` (n values) from the next forward on."""
        data = np.ascontiguousarray(backend.to_host(data), dtype=self.dtype)
        labels = np.ascontiguousarray(backend.to_host(labels), dtype=self.dtype)
        if data.ndim != 4 or data.shape[1:] != self.item_shape:
            raise DataError(
                f"{self.label}: data has shape {data.shape} but the layer expects "
                f"(n, {', '.join(map(str, self.item_shape))})"
            )
        n = data.shape[0]
        if labels.size != n or (labels.ndim and labels.shape[0] != n):
            raise DataError(
                f"{self.label}: {labels.size} labels (shape {labels.shape}) for {n} data rows; "
                "give one label per row"
            )
        if n == 0 or n % self.batch_size:
            raise DataError(
                f"{self.label}: {n} rows is not a (positive) multiple of batch_size "
                f"{self.batch_size}"
            )
        self._data, self._labels = data, labels.reshape(n)
        self._position = 0

    def forward(self, bottoms, tops):
        if self._data is None:
            raise DataError(f"{self.label}: no data yet; call set_input_arrays(data, labels) "
                            "before running the net")
        rows = slice(self._position, self._position + self.batch_size)
        _copy_to_top(tops[0].data, self._data[rows])
        _copy_to_top(tops[1].data, self._labels[rows])
        self._position = (self._position + self.batch_size) % len(self._data)

    def get_state(self) -> dict:
        return {"position": int(self._position)}

    def set_state(self, state: dict) -> None:
        self._position = int(state.get("position", 0))
        if self._data is not None:
            self._position %= len(self._data)


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Writes its two bottoms as rows of datasets ``data`` and ``label`` of ``file_name``.

    Every forward appends its batch, so the file holds all batches seen (Caffe's layer can
    only write once); the file is flushed after each forward and closed with the net.
    """

    num_bottoms = 2
    num_tops = 0
    has_backward = False

    def setup(self, bottom_shapes):
        file_name = self.param.hdf5_output_param.file_name
        if not file_name:
            raise ConfigError(f"{self.label}: hdf5_output_param.file_name is not set")
        self.writer = Hdf5Appender(file_name)

    def reshape(self, bottom_shapes):
        if bottom_shapes[0][:1] != bottom_shapes[1][:1]:
            raise self.shape_error(
                f"bottom 0 has shape {bottom_shapes[0]} and bottom 1 {bottom_shapes[1]}; "
                "data and label need the same first dimension"
            )
        return []

    def forward(self, bottoms, tops):
        self.writer.append({"data": backend.to_host(bottoms[0].data),
                            "label": backend.to_host(bottoms[1].data)})

    def close(self) -> None:
        self.writer.close()

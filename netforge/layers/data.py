"""Layers without bottoms that produce the net's inputs: Input, DummyData and Data (LMDB)."""

from __future__ import annotations

import numpy as np

from netforge import netforge_pb2 as pb
from netforge.data.prefetch import Prefetcher
from netforge.data.records import datum_to_array, load_mean_file, parse_datum
from netforge.data.stores import LmdbReader
from netforge.data.transformer import Transformer
from netforge.errors import ConfigError, DataError
from netforge.fillers import fill
from netforge.layers.base import Layer
from netforge.layers.registry import register


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


@register("Data")
class DataLayer(Layer):
    """Batches of Datums from an LMDB dataset: tops data (N, C, h, w) and optional label (N,).

    Records are read in key order, wrapping around at the end, and preprocessed by
    ``transform_param`` in a background thread that keeps ``prefetch`` batches ready. Batch k
    holds records ``origin + k*N ...`` (modulo the dataset size) and its random crops and
    mirrors come from a generator seeded by (layer seed, k), so ``get_state``/``set_state``
    resume the stream bit-exactly.
    """

    num_bottoms = 0
    min_tops = 1
    max_tops = 2
    has_backward = False

    _reader: LmdbReader | None = None
    _prefetcher: Prefetcher | None = None

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
        self.batch_size = int(dp.batch_size)
        self.depth = max(1, int(dp.prefetch))
        self.source = self.resolve_path(dp.source)
        self._reader = LmdbReader(self.source)
        if not len(self._reader):
            raise DataError(f"{self.label}: dataset {self.source} is empty")

        tp = self._transform_param()
        self.force_color = bool(tp.force_color or dp.force_encoded_color)
        self.force_gray = bool(tp.force_gray)
        if tp.force_color and tp.force_gray:
            raise ConfigError(f"{self.label}: force_color and force_gray exclude each other")
        mean = None
        if tp.mean_file:
            if len(tp.mean_value):
                raise ConfigError(
                    f"{self.label}: give mean_file or mean_value, not both"
                )
            mean = load_mean_file(self.resolve_path(tp.mean_file))
        elif len(tp.mean_value):
            mean = list(tp.mean_value)
        self.transformer = Transformer(
            scale=tp.scale, mean=mean, crop_size=tp.crop_size, mirror=tp.mirror,
            train=self.phase == "TRAIN",
        )

        # Shapes come from the first record, as Caffe's does.
        key, value = self._reader.first()
        first, _ = self._decode(key, value)
        self.item_shape = self.transformer.output_shape(first.shape)

        # Everything random about this layer derives from one seed drawn from the net's rng.
        self.seed = int(self.ctx.rng.integers(0, 2**63 - 1))
        skip = 0
        if dp.rand_skip:
            skip = int(np.random.default_rng(self.seed).integers(0, dp.rand_skip))
        self._origin = skip % len(self._reader)
        self._next_batch = 0
        self._host_dtype = np.dtype(self.dtype)

    def _transform_param(self) -> pb.TransformationParameter:
        """transform_param, with the deprecated data_param fields moved into it."""
        tp = pb.TransformationParameter()
        tp.CopyFrom(self.param.transform_param)
        dp = self.param.data_param
        for name in ("scale", "mean_file", "crop_size", "mirror"):
            if dp.HasField(name) and not tp.HasField(name):
                setattr(tp, name, getattr(dp, name))
        return tp

    def _decode(self, key: bytes, value: bytes):
        where = f"{self.source} record {key.decode('utf-8', 'replace')!r}"
        datum = parse_datum(value, where)
        try:
            return datum_to_array(datum, force_color=self.force_color, force_gray=self.force_gray)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None

    def reshape(self, bottom_shapes):
        shapes = [(self.batch_size, *self.item_shape), (self.batch_size,)]
        return shapes[: len(self.param.top)]

    # -- loading (runs in the prefetch thread) ------------------------------------------------
    def _allocate(self) -> dict:
        return {
            "data": np.empty((self.batch_size, *self.item_shape), dtype=self._host_dtype),
            "label": np.empty((self.batch_size,), dtype=self._host_dtype),
        }

    def batch_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(index,)))

    def _load_batch(self, index: int, out: dict) -> None:
        reader = self._reader
        n = self.batch_size
        reader.seek(self._origin + index * n)
        rng = self.batch_rng(index)
        data, labels = out["data"], out["label"]
        for i in range(n):
            key, value = reader.next()
            image, label = self._decode(key, value)
            shape = self.transformer.output_shape(image.shape)
            if shape != self.item_shape:
                raise DataError(
                    f"{self.label}: record {key.decode('utf-8', 'replace')!r} of {self.source} "
                    f"gives a {shape} item but the first record gives {self.item_shape}; all "
                    "records must have one size (or use crop_size)"
                )
            self.transformer.apply(image, data[i], rng=rng)
            labels[i] = label

    def _start(self) -> None:
        self._prefetcher = Prefetcher(
            self._load_batch, self.depth, allocate=self._allocate, start=self._next_batch,
            name=f"prefetch-{self.name}",
        )

    # -- the contract -------------------------------------------------------------------------
    def forward(self, bottoms, tops):
        if self._prefetcher is None:
            if self._reader is None:
                raise DataError(f"{self.label}: the layer is closed")
            self._start()
        batch = self._prefetcher.next()
        self._next_batch = self._prefetcher.last_index + 1
        _copy_to_top(tops[0].data, batch["data"])
        if len(tops) > 1:
            _copy_to_top(tops[1].data, batch["label"])

    # -- resume -------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Where the stream is: the next record to be consumed, the next batch, the seed."""
        return {
            "position": int((self._origin + self._next_batch * self.batch_size)
                            % len(self._reader)),
            "batch_index": int(self._next_batch),
            "seed": int(self.seed),
        }

    def set_state(self, state: dict) -> None:
        """Resume from ``get_state()``'s dict: the next forward returns the batch that
        would have followed when the state was taken."""
        self._stop_prefetch()
        if "seed" in state:
            self.seed = int(state["seed"])
        self._next_batch = int(state.get("batch_index", 0))
        position = int(state.get("position", 0))
        self._origin = (position - self._next_batch * self.batch_size) % len(self._reader)

    def _stop_prefetch(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def close(self) -> None:
        self._stop_prefetch()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

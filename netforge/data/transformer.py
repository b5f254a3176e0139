"""Caffe's TransformationParameter applied to one (C, H, W) image: crop, mirror, mean, scale.

Per element: ``out = (pixel - mean) * scale``. The crop is random in TRAIN and centred in
TEST; with ``mirror`` each image is flipped horizontally with probability 0.5 in both
phases. A mean image is indexed at the crop offset, so it must have the stored image size.

Randomness: each image gets three uniform numbers in [0, 1) (its "draw": mirror, crop row
offset, crop column offset, Caffe's order). A batch's draws are taken in one call before any
image is transformed, so parallel workers may transform the images in any order and the
batch stays bit-identical. The loaders take them from ``batch_draws``: the Philox stream of
ops/random.py keyed by the layer's seed, its draw counter the batch index — a pure function
of (seed, batch), so a resumed run sees the same crops and mirrors.
"""

from __future__ import annotations

import numpy as np

from netforge.errors import DataError
from netforge.ops.random import RandomStream, philox_key, stream_id

DRAWS_PER_IMAGE = 3  # mirror, crop row offset, crop column offset
# Largest output image (elements) whose per-image crops apply_batch gathers in one fancy
# index; above it one slice per image is faster (measured: even at 3×64×64, 4× slower at
# 3×227×227), and numpy's per-call overhead is small next to the copy anyway.
GATHER_MAX_ELEMENTS = 4096


class Transformer:
    """Preprocesses images into preallocated float outputs.

    ``mean``: None, a list of per-channel values (one value applies to all channels), or a
    (C, H, W) mean image (from a mean file). ``rng`` is a numpy Generator (only used when
    ``mirror`` is on or when cropping in TRAIN); ``apply`` may be given another one per call.
    """

    def __init__(
        self,
        *,
        scale: float = 1.0,
        mean=None,
        crop_size: int = 0,
        mirror: bool = False,
        train: bool = True,
        rng: np.random.Generator | None = None,
    ):
        self.scale = float(scale)
        self.crop_size = int(crop_size)
        self.mirror = bool(mirror)
        self.train = bool(train)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.mean_image: np.ndarray | None = None
        self.mean_values: np.ndarray | None = None
        if mean is not None:
            mean_array = np.asarray(mean, dtype=np.float32)
            if mean_array.ndim == 4 and mean_array.shape[0] == 1:
                mean_array = mean_array[0]
            if mean_array.ndim == 3:
                self.mean_image = np.ascontiguousarray(mean_array)
            elif mean_array.ndim <= 1 and mean_array.size:
                self.mean_values = mean_array.reshape(-1)
            elif mean_array.size:
                raise DataError(
                    f"mean must be per-channel values or a C×H×W image, got shape "
                    f"{mean_array.shape}"
                )
        self._mean_cache: dict[int, np.ndarray] = {}

    def output_shape(self, datum_shape) -> tuple[int, int, int]:
        """(C, h, w) of the transformed image for a stored image of (C, H, W).

        Raises DataError when the mean or the crop does not fit the image.
        """
        channels, height, width = (int(d) for d in datum_shape)
        if self.mean_image is not None and self.mean_image.shape != (channels, height, width):
            raise DataError(
                f"mean file has size {'×'.join(map(str, self.mean_image.shape))} but the images "
                f"are {channels}×{height}×{width}; the mean must have the stored image size"
            )
        if self.mean_values is not None and self.mean_values.size not in (1, channels):
            raise DataError(
                f"{self.mean_values.size} mean values given for {channels}-channel images; "
                f"give one value or one per channel"
            )
        if self.crop_size:
            if self.crop_size > height or self.crop_size > width:
                raise DataError(
                    f"crop_size {self.crop_size} is larger than the images ({height}×{width})"
                )
            return channels, self.crop_size, self.crop_size
        return channels, height, width

    def _values_for(self, channels: int) -> np.ndarray:
        cached = self._mean_cache.get(channels)
        if cached is None:
            values = self.mean_values
            if values.size == 1:
                values = np.broadcast_to(values, (channels,))
            cached = np.ascontiguousarray(values, dtype=np.float32).reshape(channels, 1, 1)
            self._mean_cache[channels] = cached
        return cached

    def draw(self, rng: np.random.Generator | None, count: int) -> np.ndarray:
        """``(count, 3)`` uniforms in [0, 1): one row per image, consumed by ``offsets``."""
        rng = rng if rng is not None else self.rng
        return rng.random((int(count), DRAWS_PER_IMAGE))

    def batch_draws(self, seed: int, index: int, count: int) -> np.ndarray:
        """``(count, 3)`` uniforms of batch ``index``: Philox (seed, batch), see above."""
        stream = RandomStream(philox_key(seed), stream_id("transform_param"))
        stream.draws[...] = int(index)
        return stream.random(out=np.empty((int(count), DRAWS_PER_IMAGE)))

    def offsets(self, height: int, width: int, rng: np.random.Generator | None = None,
                *, draw=None):
        """``(h_off, w_off, mirror)`` for one image from its ``draw`` (or a fresh one)."""
        if draw is None:
            draw = self.draw(rng, 1)[0]
        do_mirror = bool(draw[0] < 0.5) if self.mirror else False
        h_off = w_off = 0
        if self.crop_size:
            rows, cols = height - self.crop_size + 1, width - self.crop_size + 1
            if self.train:
                h_off = min(int(draw[1] * rows), rows - 1)
                w_off = min(int(draw[2] * cols), cols - 1)
            else:
                h_off, w_off = (height - self.crop_size) // 2, (width - self.crop_size) // 2
        return h_off, w_off, do_mirror

    def batch_offsets(self, height: int, width: int, draws: np.ndarray):
        """``offsets`` for every row of ``draws`` at once: (h_off, w_off, mirror) arrays, the
        same numbers (the same float products, truncated the same way)."""
        draws = np.asarray(draws, dtype=np.float64)
        n = len(draws)
        mirror = draws[:, 0] < 0.5 if self.mirror else np.zeros(n, dtype=bool)
        h_off = np.zeros(n, dtype=np.intp)
        w_off = np.zeros(n, dtype=np.intp)
        if self.crop_size:
            rows, cols = height - self.crop_size + 1, width - self.crop_size + 1
            if self.train:
                h_off = np.minimum((draws[:, 1] * rows).astype(np.intp), rows - 1)
                w_off = np.minimum((draws[:, 2] * cols).astype(np.intp), cols - 1)
            else:
                h_off[:] = (height - self.crop_size) // 2
                w_off[:] = (width - self.crop_size) // 2
        return h_off, w_off, mirror

    def apply(self, chw: np.ndarray, out: np.ndarray, *, rng=None, draw=None) -> None:
        """Transform ``chw`` (C, H, W) into ``out`` (C, h, w), a float view of the batch.

        ``draw`` is this image's row of ``draw()``; without it one is taken from ``rng``.
        """
        channels, height, width = chw.shape
        _, out_h, out_w = out.shape
        h_off, w_off, do_mirror = self.offsets(height, width, rng, draw=draw)
        src = chw[:, h_off : h_off + out_h, w_off : w_off + out_w]
        # Mirroring writes through a reversed view of out: the mean stays at source positions.
        dst = out[:, :, ::-1] if do_mirror else out
        if self.mean_image is not None:
            mean = self.mean_image[:, h_off : h_off + out_h, w_off : w_off + out_w]
            np.subtract(src, mean, out=dst, casting="unsafe")
        elif self.mean_values is not None:
            np.subtract(src, self._values_for(channels), out=dst, casting="unsafe")
        else:
            np.copyto(dst, src, casting="unsafe")
        if self.scale != 1.0:
            out *= out.dtype.type(self.scale)

    def apply_batch(self, images: np.ndarray, out: np.ndarray, draws: np.ndarray) -> None:
        """``apply`` to every image of a batch: ``images`` (N, C, H, W), ``out`` (N, C, h, w),
        ``draws`` (N, 3). The same values bit for bit (the same numpy operations on the same
        element types), in a few whole-batch operations instead of a few per image: what
        costs most for small images is numpy's overhead per call, not the arithmetic."""
        n, channels, height, width = images.shape
        _, _, out_h, out_w = out.shape
        h_off, w_off, mirror = self.batch_offsets(height, width, draws)
        mean = self.mean_image
        if (h_off == h_off[0]).all() and (w_off == w_off[0]).all():  # one crop for all
            rows, cols = slice(h_off[0], h_off[0] + out_h), slice(w_off[0], w_off[0] + out_w)
            src = images[:, :, rows, cols]
            if mean is not None:
                mean = mean[:, rows, cols]
        elif channels * out_h * out_w > GATHER_MAX_ELEMENTS:  # large images: one by one
            for i in range(n):
                self.apply(images[i], out[i], draw=draws[i])
            return
        else:  # each image's crop, gathered from the windows of every possible crop
            windows = np.lib.stride_tricks.sliding_window_view
            src = windows(images, (out_h, out_w), axis=(2, 3))[np.arange(n), :, h_off, w_off]
            if mean is not None:
                mean = windows(mean, (out_h, out_w), axis=(1, 2))[:, h_off, w_off]
                mean = mean.transpose(1, 0, 2, 3)
        if mean is not None:
            np.subtract(src, mean, out=out, casting="unsafe")
        elif self.mean_values is not None:
            np.subtract(src, self._values_for(channels), out=out, casting="unsafe")
        else:
            np.copyto(out, src, casting="unsafe")
        if mirror.any():  # after the mean, which stays at source positions (as in apply)
            out[mirror] = out[mirror][..., ::-1]
        if self.scale != 1.0:
            out *= out.dtype.type(self.scale)

    def __call__(self, chw: np.ndarray, *, rng=None) -> np.ndarray:
        """Transform one image into a new float32 array."""
        out = np.empty(self.output_shape(chw.shape), dtype=np.float32)
        self.apply(chw, out, rng=rng)
        return out

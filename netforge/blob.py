"""Blob: a named pair of arrays (data, diff) of one shape, as in Caffe.

Blobs are allocated once by the net's plan; layers write into ``data``/``diff`` in place.
Two blobs may share one ``data`` array (Split tops, shared params).
"""

from __future__ import annotations

from math import prod

import numpy as np


class Blob:
    """``data`` and ``diff`` arrays of ``shape`` on the array module ``xp``."""

    __slots__ = ("data", "diff", "xp", "dtype")

    def __init__(self, shape, dtype=np.float32, xp=np, *, with_diff: bool = True):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.data = xp.zeros(tuple(int(d) for d in shape), dtype=self.dtype)
        self.diff = xp.zeros_like(self.data) if with_diff else None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(prod(self.data.shape))

    @property
    def num(self) -> int:
        return self.shape[0]

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def height(self) -> int:
        return self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[3]

    def reshape(self, *shape) -> None:
        """Give the blob a new shape; memory is reallocated only when the count changes."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if shape == self.shape:
            return
        if prod(shape) == self.count and self.data.flags.c_contiguous:
            self.data = self.data.reshape(shape)
            if self.diff is not None:
                self.diff = self.diff.reshape(shape)
            return
        self.data = self.xp.zeros(shape, dtype=self.dtype)
        if self.diff is not None:
            self.diff = self.xp.zeros_like(self.data)

    def share_data(self, other: Blob) -> None:
        self.data = other.data

    def share_diff(self, other: Blob) -> None:
        self.diff = other.diff

    def share_reshaped(self, other: Blob, shape) -> None:
        """Become a view of ``other``'s data and diff under another ``shape`` of the same
        count (Caffe's Reshape layer: ShareData + ShareDiff; nothing is copied)."""
        shape = tuple(int(d) for d in shape)
        if prod(shape) != other.count:
            raise ValueError(f"cannot view {other.shape} as {shape}: the counts differ")
        if not other.data.flags.c_contiguous:  # reshape would silently copy
            raise ValueError(f"cannot view a non-contiguous blob {other.shape} as {shape}")
        self.data = other.data.reshape(shape)
        self.diff = other.diff.reshape(shape) if other.diff is not None else None

    def __repr__(self) -> str:
        return f"Blob(shape={self.shape}, dtype={self.dtype})"


def shape_string(shape) -> str:
    """Caffe's log form: ``64 20 24 24 (737280)``."""
    dims = " ".join(str(int(d)) for d in shape)
    count = prod(int(d) for d in shape)
    return f"{dims} ({count})" if dims else f"({count})"

"""Crop (Caffe's Crop layer): cut a block of x, of a reference blob's shape, at given offsets.

    crop_window(x_shape, ref_shape, axis, offsets) -> tuple of slices
    crop_forward(x, y, window)
    crop_backward(dy, dx, window)

Axes before ``axis`` are kept whole; from ``axis`` on, the size comes from the reference
shape and the start from ``offsets`` (none: all 0; one value: the same for every cropped
axis; else one value per cropped axis), as in Caffe. Forward assigns y; backward assigns dx:
dy inside the window, zero elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from netforge.ops.xp import Array, get_array_module


def crop_window(x_shape: Sequence[int], ref_shape: Sequence[int], axis: int,
                offsets: Sequence[int]) -> tuple[slice, ...]:
    """The slices of x that the crop keeps; raises ValueError on a crop that does not fit.

    ``axis`` must already be non-negative (canonical).
    """
    if len(x_shape) != len(ref_shape):
        raise ValueError(f"the blob to crop {tuple(x_shape)} and the reference "
                         f"{tuple(ref_shape)} must have the same number of axes")
    if not 0 <= axis < len(x_shape):
        raise ValueError(f"axis {axis} is out of range for {len(x_shape)}-D blobs")
    cropped = len(x_shape) - axis
    if len(offsets) > 1 and len(offsets) != cropped:
        raise ValueError(f"{len(offsets)} offsets given for {cropped} cropped axes "
                         f"({axis} to {len(x_shape) - 1}); give 0, 1 or {cropped}")
    window = []
    for i, size in enumerate(x_shape):
        if i < axis:
            window.append(slice(0, size))
            continue
        offset = 0 if not offsets else int(offsets[0] if len(offsets) == 1 else offsets[i - axis])
        want = ref_shape[i]
        if offset < 0 or offset + want > size:
            raise ValueError(f"axis {i}: a crop of {want} at offset {offset} does not fit in "
                             f"size {size}")
        window.append(slice(offset, offset + want))
    return tuple(window)


def crop_forward(x: Array, y: Array, window: tuple[slice, ...]) -> None:
    """y = x[window], assigned."""
    get_array_module(x).copyto(y, x[window])


def crop_backward(dy: Array, dx: Array, window: tuple[slice, ...]) -> None:
    """dx = zeros with dy placed at the window, assigned."""
    dx.fill(0)
    get_array_module(dy).copyto(dx[window], dy)

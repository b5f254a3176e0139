"""Image sources: Caffe list files, class folders, and image decoding to (C, H, W) BGR uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netforge.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def parse_list_file(path) -> list[tuple[str, int]]:
    """``[(relative path, label)]`` from a Caffe list file.

    Each line is ``relpath label``, split at the LAST space (so paths may contain spaces);
    blank lines are skipped; a line that does not parse raises DataError naming file:line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"list file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read list file {path}: {exc}") from None
    entries: list[tuple[str, int]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line.strip():
            continue
        cut = max(line.rfind(" "), line.rfind("\t"))
        rel, label_text = line[:cut], line[cut + 1 :]
        try:
            if cut <= 0 or not rel.strip():
                raise ValueError
            label = int(label_text)
        except ValueError:
            raise DataError(
                f'{path}:{lineno}: expected "relative/path label", got {raw.strip()!r}'
            ) from None
        entries.append((rel.lstrip(), label))
    return entries


def is_image_file(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def scan_class_folders(root) -> tuple[list[tuple[str, int]], list[str]]:
    """``([(relative path, label)], class names)`` for a folder with one sub-folder per class.

    The label of a class is the index of its folder name in sorted order; images are found by
    extension, recursively inside each class folder, in sorted path order. Relative paths use
    ``/``. Hidden folders and files (``.name``) are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    classes = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected ROOT/<class>/<image>)")
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        found = [
            p for p in (root / name).rglob("*")
            if p.is_file() and is_image_file(p)
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
        for p in sorted(found, key=lambda q: q.relative_to(root).as_posix()):
            samples.append((p.relative_to(root).as_posix(), label))
    if not samples:
        raise DataError(f"no image files under the class folders of {root}")
    return samples, classes


def load_image(
    path, *, color: bool | None = True, resize: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """Decode an image file into (C, H, W) uint8: BGR when colour, 1×H×W when gray.

    ``color``: True -> 3 channels (gray images are expanded, as OpenCV's IMREAD_COLOR does),
    False -> 1 channel, None -> as stored. ``resize=(H, W)`` resizes bilinearly (OpenCV's
    default); (0, 0) keeps the size. EXIF orientation is ignored.
    """
    from netforge.data.records import decode_image_bytes

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read image: {exc.strerror or exc}") from None
    # One decoder for files and stored bytes: the same errors, the one that is fuzzed.
    chw = decode_image_bytes(data, color=color, where=str(path))
    height, width = check_resize(resize)
    if height and width and (height, width) != chw.shape[1:]:
        chw = resize_bilinear(chw, height, width)
    return chw


def check_resize(resize) -> tuple[int, int]:
    height, width = (int(v) for v in (resize or (0, 0)))
    if height < 0 or width < 0:
        raise ConfigError(f"resize height and width must be >= 0 (0 keeps the size), got "
                          f"{height}x{width}")
    if (height == 0) != (width == 0):
        raise ConfigError(
            f"resize needs both a height and a width (or neither), got {height}x{width}"
        )
    return height, width


def _axis_weights(src: int, dst: int):
    # OpenCV INTER_LINEAR: half-pixel centres, clamped at the borders, no antialiasing.
    scale = src / dst
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    low = i0 < 0
    frac[low], i0[low] = 0.0, 0
    high = i0 >= src - 1
    frac[high], i0[high] = 0.0, src - 1
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, frac


def resize_bilinear(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (C, H, W) to (C, height, width), as OpenCV's INTER_LINEAR."""
    _, src_h, src_w = chw.shape
    y0, y1, fy = _axis_weights(src_h, height)
    x0, x1, fx = _axis_weights(src_w, width)
    src = chw.astype(np.float32)
    fy = fy.astype(np.float32)[None, :, None]
    fx = fx.astype(np.float32)[None, None, :]
    rows = src[:, y0, :] * (1 - fy) + src[:, y1, :] * fy
    out = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
    if chw.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(chw.dtype)

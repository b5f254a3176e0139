"""Expand the bundled MNIST sample into class folders of grayscale PNGs.

    python tools/mnist_to_folders.py OUT [--csv tests/data/mnist_4k.csv.gz] [--limit N]

Each line of the CSV holds 784 pixel values (0-255, 28×28, row-major) and then the label;
image i of the file becomes ``OUT/<label>/<i>.png`` (i zero-padded to 5 digits). The result
feeds ``netforge convert OUT DEST --gray --val-fraction 0.1``.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CSV = Path(__file__).resolve().parent.parent / "tests" / "data" / "mnist_4k.csv.gz"


def read_mnist_csv(path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) int64)`` from the CSV (optionally gzipped)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64, max_rows=limit, ndmin=2)
    if rows.shape[1] != 785:
        raise ValueError(f"{path}: expected 785 values a line (784 pixels + label), "
                         f"got {rows.shape[1]}")
    pixels, labels = rows[:, :784], rows[:, 784]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise ValueError(f"{path}: pixel values must lie in 0..255")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def write_folders(images: np.ndarray, labels: np.ndarray, out) -> int:
    """Write ``out/<label>/<index>.png`` for every image; returns the number written."""
    out = Path(out)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{index:05d}.png")
    return len(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (one sub-folder per digit)")
    parser.add_argument("--csv", default=str(DEFAULT_CSV), help="MNIST CSV(.gz) file")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = parser.parse_args(argv)
    images, labels = read_mnist_csv(args.csv, args.limit)
    count = write_folders(images, labels, args.out)
    print(f"wrote {count} images into {args.out}/<digit>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Datasets: a workspace folder of class sub-folders converted with netforge.data.convert.

Each dataset lives in ``datasets/<id>/``: ``db/`` (LMDB, ``train``/``val`` when a val
fraction is given, and ``labels.txt``), ``mean.binaryproto`` (of the train split),
``mean.png`` and ``samples.png`` (a grid: one row per class). The conversion runs on a
thread; its progress is kept in memory, its result in the store.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from netforge.data.convert import compute_mean, convert_images
from netforge.data.records import datum_to_array, parse_datum, save_mean_file
from netforge.data.stores import LmdbReader
from netforge.errors import ConfigError, NetforgeError
from netforge.serve.forms import Fields, FormError
from netforge.serve.store import NotFound, Store
from netforge.serve.workspace import Workspace

SAMPLES_PER_CLASS = 8


def dataset_options(fields: Fields, workspace: Workspace) -> dict:
    """The options of a new dataset from a form; the source must lie in the workspace."""
    source = workspace.resolve(fields.text("source", required=True, max_length=1000))
    if not source.is_dir():
        raise FormError(f'"{fields.text("source")}" is not a folder')
    workspace.check_tree(source)
    encode_type = fields.choice("encode_type", ("none", "png", "jpg"), "none")
    return {
        "source": source.relative_to(workspace.root).as_posix(),
        "resize_height": fields.integer("resize_height", 0, low=0, high=4096),
        "resize_width": fields.integer("resize_width", 0, low=0, high=4096),
        "gray": fields.flag("gray"),
        "encoded": fields.flag("encoded") or encode_type != "none",
        "encode_type": None if encode_type == "none" else encode_type,
        "val_fraction": fields.number("val_fraction", 0.1, low=0.0, high=1.0, high_open=True),
        "shuffle": fields.flag("shuffle", True),
        "seed": fields.integer("seed", 0, low=0, high=2**31 - 1),
    }


def splits_of(dataset: dict) -> list[str]:
    return ["train", "val"] if dataset["options"]["val_fraction"] > 0 else [""]


class Datasets:
    def __init__(self, workspace: Workspace, store: Store):
        self.workspace = workspace
        self.store = store
        self.progress: dict[int, tuple[int, int]] = {}
        # A conversion cut short by a server stop left only a temporary folder behind.
        for row in store.all("datasets", state="converting"):
            store.update("datasets", row["id"], state="error",
                         error="interrupted by a server stop; delete it and convert again")

    def db_path(self, dataset: dict, split: str) -> Path:
        return self.workspace.dataset_dir(dataset["id"]) / "db" / split

    def create(self, fields: Fields) -> dict:
        name = fields.text("name", required=True, max_length=80)
        options = dataset_options(fields, self.workspace)
        dataset_id = self.store.insert("datasets", name=name, state="converting",
                                       options=options)
        self.progress[dataset_id] = (0, 0)
        threading.Thread(target=self._convert, args=(dataset_id,), daemon=True,
                         name=f"dataset-{dataset_id}").start()
        return self.get(dataset_id)

    def get(self, dataset_id: int) -> dict | None:
        row = self.store.get("datasets", dataset_id)
        if row is not None:
            done, total = self.progress.get(row["id"], (0, 0))
            row["progress"] = {"done": done, "total": total}
        return row

    def list(self) -> list[dict]:
        return [self.get(row["id"]) for row in self.store.all("datasets")]

    def delete(self, dataset_id: int) -> None:
        row = self.store.get("datasets", dataset_id)
        if row is None:
            raise NotFound(f"no dataset {dataset_id}")
        if row["state"] == "converting":
            raise ConfigError(f"dataset {dataset_id} is still converting; wait for it to end")
        shutil.rmtree(self.workspace.dataset_dir(dataset_id), ignore_errors=True)
        self.store.delete("datasets", dataset_id)

    def _convert(self, dataset_id: int) -> None:
        row = self.store.get("datasets", dataset_id)
        options = dict(row["options"])
        folder = self.workspace.dataset_dir(dataset_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            summary = convert_images(
                self.workspace.root / options["source"], folder / "db",
                resize=(options["resize_height"], options["resize_width"]),
                gray=options["gray"], shuffle=options["shuffle"], seed=options["seed"],
                encoded=options["encoded"], encode_type=options["encode_type"],
                val_fraction=options["val_fraction"], overwrite=True,
                progress=lambda done, total: self.progress.__setitem__(dataset_id,
                                                                      (done, total)))
            info = describe(folder, splits_of(row), summary.labels)
            info["skipped"] = [{"path": p, "reason": r} for p, r in summary.skipped]
            info["seconds"] = round(summary.seconds, 2)
            self.store.update("datasets", dataset_id, state="done", info=info)
        except NetforgeError as exc:
            self.store.update("datasets", dataset_id, state="error", error=str(exc))
        except Exception as exc:  # noqa: BLE001 — a failed conversion must not kill the server
            self.store.update("datasets", dataset_id, state="error",
                              error=f"{type(exc).__name__}: {exc}")


def describe(folder: Path, splits: list[str], labels: list[str]) -> dict:
    """Counts per class and split, the image shape, the mean and the sample grid."""
    counts: dict[str, list[int]] = {}
    samples: dict[int, list[np.ndarray]] = {}
    shape = None
    for split in splits:
        per_class = [0] * len(labels)
        with LmdbReader(folder / "db" / split) as reader:
            for _key, value in reader:
                image, label = datum_to_array(parse_datum(value))
                per_class[label] += 1
                shape = shape or list(image.shape)
                if split == splits[0] and len(samples.setdefault(label, [])) < SAMPLES_PER_CLASS:
                    samples[label].append(np.array(image))
        counts[split or "all"] = per_class
    mean = compute_mean(folder / "db" / splits[0])
    save_mean_file(folder / "mean.binaryproto", mean)
    to_png(mean[0]).save(folder / "mean.png")
    sample_grid(samples, len(labels)).save(folder / "samples.png")
    return {"labels": labels, "counts": counts, "shape": shape,
            "splits": [s or "all" for s in splits]}


def to_png(chw: np.ndarray) -> Image.Image:
    """A (C, H, W) BGR or grey array in 0..255 as a PIL image."""
    pixels = np.clip(np.asarray(chw, dtype=np.float32), 0, 255).round().astype(np.uint8)
    if pixels.shape[0] == 1:
        return Image.fromarray(pixels[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(pixels[::-1].transpose(1, 2, 0)), mode="RGB")


def sample_grid(samples: dict[int, list[np.ndarray]], classes: int, gap: int = 2) -> Image.Image:
    """One row per class, up to SAMPLES_PER_CLASS images each, on a white background."""
    first = next((images[0] for images in samples.values() if images), None)
    if first is None:
        return Image.new("RGB", (1, 1), "white")
    height = max(im.shape[1] for images in samples.values() for im in images)
    width = max(im.shape[2] for images in samples.values() for im in images)
    grid = Image.new("RGB", (SAMPLES_PER_CLASS * (width + gap) + gap,
                             max(classes, 1) * (height + gap) + gap), "white")
    for label in range(classes):
        for column, image in enumerate(samples.get(label, [])):
            grid.paste(to_png(image).convert("RGB"),
                       (gap + column * (width + gap), gap + label * (height + gap)))
    return grid

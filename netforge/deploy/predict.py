"""``netforge predict``: classify image files with a frozen model or a deploy net + weights.

Images are decoded and preprocessed (``netforge.deploy.preprocess``) one batch ahead on a
background thread while the net runs the current batch; the net's input is sized to the
batch once, and the last, shorter batch is padded. An image that cannot be read is reported
through ``on_skip`` and left out.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netforge import backend
from netforge.data.image_list import is_image_file
from netforge.deploy import frozen
from netforge.deploy.preprocess import Preprocess, with_options
from netforge.errors import ConfigError, DataError
from netforge.files import is_text_file
from netforge.net import Net

log = logging.getLogger("netforge")


@dataclass
class Prediction:
    """The top classes of one image: (class index, label, probability), best first."""

    path: str
    top: list[tuple[int, str, float]]


def find_images(inputs: Iterable) -> list[Path]:
    """Image files from ``inputs``: files as given (in order), folders searched recursively
    for image extensions in sorted path order (hidden entries skipped)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            hits = [p for p in path.rglob("*") if p.is_file() and is_image_file(p)
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            found.extend(sorted(hits, key=lambda p: p.relative_to(path).as_posix()))
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return found


class Predictor:
    """Runs ``net`` on image files, ``batch_size`` at a time.

    Args:
        net: a TEST-phase net with weights; its ``preprocess.input`` blob gets the images.
        preprocess: how files become inputs (bound to the input's shape here).
        labels: class names by output index (empty: the index is the label).
        output: the blob to read (default: the last Softmax's output, else the net's
            first output); its values per sample are taken as class probabilities.
    """

    def __init__(self, net: Net, preprocess: Preprocess, labels=(), batch_size: int = 32,
                 output: str | None = None, oversample: bool = False):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.net = net
        self.preprocess = preprocess
        self.labels = list(labels)
        self.output = output or frozen.prediction_output(net)
        if self.output not in net.blobs:
            raise ConfigError(f'the net has no output blob "{self.output}" '
                              f"(outputs: {', '.join(net.outputs) or 'none'})")
        self.oversample = oversample
        self.batch_size = batch_size
        self.crops = preprocess.crops_per_image(oversample)
        blob = net.blobs[preprocess.input]
        preprocess.bind(blob.shape)
        rows = batch_size * self.crops
        if blob.shape[0] != rows:
            blob.reshape(rows, *blob.shape[1:])
            net.reshape()
        # Host staging buffers, two so that one fills while the other is in the net.
        self._buffers = [np.zeros(blob.shape, np.float32) for _ in range(2)]

    def _load_batch(self, paths: list[Path], buffer: np.ndarray, on_skip):
        """Fill ``buffer`` with the readable images of ``paths``; returns those paths."""
        kept = []
        for path in paths:
            try:
                image = self.preprocess.load(path)
            except DataError as exc:
                if on_skip is not None:
                    on_skip(path, str(exc))
                continue
            row = len(kept) * self.crops
            self.preprocess.fill(image, buffer[row:row + self.crops], self.oversample)
            kept.append(path)
        buffer[len(kept) * self.crops:] = 0  # padding rows of a short batch
        return kept

    def probabilities(self, batch: np.ndarray, count: int) -> np.ndarray:
        """Run the net on a staged batch; (count, classes), crops averaged."""
        out = self.net.forward(**{self.preprocess.input: batch})[self.output]
        scores = np.asarray(backend.to_host(out), dtype=np.float32)
        scores = scores[:count * self.crops].reshape(count * self.crops, -1)
        if self.crops > 1:
            scores = scores.reshape(count, self.crops, -1).mean(axis=1)
        return scores

    def run(self, paths: list[Path], top_k: int = 5,
            on_skip: Callable[[Path, str], None] | None = None,
            progress: Callable[[int, int], None] | None = None) -> Iterator[Prediction]:
        """Predictions for the readable ``paths``, in order."""
        if top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {top_k}")
        chunks = [paths[i:i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        done = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="netforge-predict") as pool:
            pending = (pool.submit(self._load_batch, chunks[0], self._buffers[0], on_skip)
                       if chunks else None)
            for index, chunk in enumerate(chunks):
                kept = pending.result()
                buffer = self._buffers[index % 2]
                if index + 1 < len(chunks):  # decode the next batch while this one runs
                    pending = pool.submit(self._load_batch, chunks[index + 1],
                                          self._buffers[(index + 1) % 2], on_skip)
                if kept:
                    scores = self.probabilities(buffer, len(kept))
                    yield from self._top(kept, scores, top_k)
                done += len(chunk)
                if progress is not None:
                    progress(done, len(paths))

    def _top(self, paths, scores: np.ndarray, top_k: int) -> Iterator[Prediction]:
        k = min(top_k, scores.shape[1])
        for path, row in zip(paths, scores, strict=True):
            best = np.argsort(-row, kind="stable")[:k]
            yield Prediction(str(path), [(int(c), self.label(int(c)), float(row[c]))
                                         for c in best])

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)


# -- output formats --------------------------------------------------------------------------


def format_table(predictions: list[Prediction]) -> str:
    """One row per (image, rank): image (on its first row), rank, class, probability."""
    rows = [("image", "rank", "class", "probability")]
    for p in predictions:
        for rank, (index, label, prob) in enumerate(p.top, start=1):
            name = label if label == str(index) else f"{label} ({index})"
            rows.append((p.path if rank == 1 else "", str(rank), name, f"{prob:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
             for r in rows]
    return "\n".join(lines)


def format_json_line(p: Prediction) -> str:
    return json.dumps({"image": p.path, "top": [
        {"index": index, "label": label, "probability": round(prob, 6)}
        for index, label, prob in p.top]})


CSV_HEADER = ("image", "rank", "index", "label", "probability")


def format_csv_rows(p: Prediction) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for rank, (index, label, prob) in enumerate(p.top, start=1):
        writer.writerow((p.path, rank, index, label, f"{prob:.6f}"))
    return buffer.getvalue().rstrip("\n")


# -- opening a model -------------------------------------------------------------------------


def warn_layers_without_weights(net, weights) -> None:
    """Say which layers kept their initial values because ``weights`` lacks them."""
    if net.layers_without_weights:
        log.warning("%s has no weights for layer(s) %s: they keep their initial (filler) "
                    "values, so the results mean little", weights,
                    ", ".join(net.layers_without_weights))


def open_model(model, weights=None, labels_file=None, output=None, **options):
    """``(net, preprocess, labels)`` for a frozen model, or a deploy prototxt + ``weights``.
    The net only predicts, so its activations share memory (``Net(reuse_memory=True)``).

    ``options`` are ``preprocess.with_options`` keywords; for a frozen model they override
    what the file holds, as ``labels_file`` overrides its labels.
    """
    if frozen.is_frozen_file(model):
        if weights:
            raise ConfigError(f"{model} is a frozen model and holds its weights; drop --weights")
        loaded = frozen.load_frozen(model, reuse_memory=True)
        net, labels = loaded.net, loaded.labels
        preprocess = with_options(loaded.preprocess, **options)
    else:
        if not is_text_file(model):
            raise ConfigError(f"{model}: a binary file, not a protobuf text file nor a frozen "
                              "model (a .caffemodel? give the deploy prototxt as MODEL and "
                              "this as --weights)")
        if not weights:
            raise ConfigError(f"{model} is a net prototxt: give its --weights (or predict with "
                              "a frozen model from `netforge freeze`)")
        net = Net(model, "test", weights=weights, reuse_memory=True)
        warn_layers_without_weights(net, weights)
        preprocess = with_options(None, **options)
        labels = []
        if not preprocess.input:
            if not net.inputs:
                raise ConfigError(f"{model}: the net has no Input layer to feed images into; "
                                  "use a deploy net")
            preprocess.input = net.inputs[0]
    if preprocess.input not in net.blobs:
        raise ConfigError(f'the net has no input "{preprocess.input}"')
    if labels_file:
        labels = frozen.read_labels(labels_file)
    if output is not None and output not in net.outputs:
        raise ConfigError(f'the net has no output "{output}" '
                          f"(outputs: {', '.join(net.outputs) or 'none'})")
    frozen.check_labels(net, labels, str(labels_file or model), output)
    preprocess.bind(net.blobs[preprocess.input].shape)
    return net, preprocess, labels

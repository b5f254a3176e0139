"""Per-class accuracy and the confusion matrix of a TEST net (``netforge test --confusion``).

The net is run forward as ``netforge test`` does; after each pass the scores and labels that
its Accuracy layer compares (else its SoftmaxWithLoss layer's bottoms) are read back, each
sample's predicted class is the arg-max of its scores, and the pair (true, predicted) is
counted. Rows of the matrix are the true classes, columns the predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from netforge.backend import to_host
from netforge.errors import ConfigError

SCORE_LAYER_TYPES = ("Accuracy", "SoftmaxWithLoss")


@dataclass
class Confusion:
    """Counts of (true class, predicted class) over the samples seen."""

    matrix: np.ndarray  # (K, K) int64, rows true, columns predicted
    labels: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.matrix)) / max(self.total, 1)

    @property
    def per_class(self) -> list[float | None]:
        """Recall of each true class; None for a class with no sample."""
        rows = self.matrix.sum(axis=1)
        return [float(self.matrix[k, k]) / rows[k] if rows[k] else None
                for k in range(len(self.matrix))]

    def label(self, k: int) -> str:
        return self.labels[k] if k < len(self.labels) else str(k)

    def to_dict(self) -> dict:
        return {"labels": [self.label(k) for k in range(len(self.matrix))],
                "matrix": self.matrix.tolist(), "per_class": self.per_class,
                "accuracy": self.accuracy, "total": self.total}

    def format_table(self) -> str:
        """Per-class accuracy lines, then the matrix (true classes down, predictions across)."""
        names = [self.label(k) for k in range(len(self.matrix))]
        width = max([5, *(len(n) for n in names), len(str(int(self.matrix.max(initial=0))))])
        lines = [f"accuracy = {self.accuracy:.4f} ({int(np.trace(self.matrix))}/{self.total})"]
        for name, value, count in zip(names, self.per_class, self.matrix.sum(axis=1),
                                      strict=True):
            shown = "-" if value is None else f"{value:.4f}"
            lines.append(f"class {name}: accuracy = {shown} ({count} samples)")
        lines.append("confusion matrix (rows: true class, columns: predicted):")
        lines.append(" " * (width + 1) + " ".join(n.rjust(width) for n in names))
        for name, row in zip(names, self.matrix, strict=True):
            lines.append(name.rjust(width) + " " + " ".join(str(int(v)).rjust(width) for v in row))
        return "\n".join(lines)


def score_and_label_blobs(net) -> tuple[str, str, int | None]:
    """(scores blob, labels blob, ignore_label or None) from the net's Accuracy layer, else
    its SoftmaxWithLoss layer."""
    for wanted in SCORE_LAYER_TYPES:
        for layer in net.param.layer:
            if layer.type == wanted and len(layer.bottom) >= 2:
                params = layer.accuracy_param if wanted == "Accuracy" else layer.loss_param
                ignore = params.ignore_label if params.HasField("ignore_label") else None
                return layer.bottom[0], layer.bottom[1], ignore
    raise ConfigError(f'net "{net.name}" has no Accuracy or SoftmaxWithLoss layer that says '
                      "which blob holds the class scores and which the labels")


def add_batch(matrix: np.ndarray, scores: np.ndarray, labels: np.ndarray,
              ignore_label: int | None = None) -> None:
    """Count one batch into ``matrix`` (grown in place is not possible: it must be K×K)."""
    scores = scores.reshape(len(labels), -1)
    predicted = scores.argmax(axis=1)
    truth = labels.astype(np.int64)
    keep = truth != ignore_label if ignore_label is not None else np.ones(len(truth), bool)
    classes = matrix.shape[0]
    if keep.any() and (truth[keep].min() < 0 or truth[keep].max() >= classes):
        raise ConfigError(f"label {int(truth[keep].max())} is outside the {classes} classes "
                          "the net scores")
    np.add.at(matrix, (truth[keep], predicted[keep]), 1)


def confusion_of_net(net, iterations: int, labels=(),
                     progress: Callable[[int, int], None] | None = None,
                     limit: int | None = None) -> Confusion:
    """Run ``net`` (TEST phase, with its data layer) ``iterations`` times and count; with
    ``limit``, only the first ``limit`` samples (a last batch that wraps around to the start
    of the data would count some twice)."""
    score_name, label_name, ignore = score_and_label_blobs(net)
    last = len(net.plan.steps) - 1
    matrix = None
    seen = 0
    for i in range(iterations):
        net.forward_range(0, last)
        scores = np.asarray(to_host(net.blobs[score_name].data), dtype=np.float64)
        truth = np.asarray(to_host(net.blobs[label_name].data)).ravel()
        if limit is not None:
            room = max(limit - seen, 0)
            scores, truth = scores[:room], truth[:room]
        seen += len(truth)
        if matrix is None:
            classes = int(np.prod(scores.shape[1:]))
            matrix = np.zeros((classes, classes), dtype=np.int64)
        add_batch(matrix, scores, truth, ignore)
        if progress is not None:
            progress(i + 1, iterations)
    if matrix is None:
        raise ConfigError("the confusion matrix needs at least one iteration")
    return Confusion(matrix=matrix, labels=list(labels))

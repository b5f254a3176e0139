"""Loss and metric layers: SoftmaxWithLoss, Accuracy, EuclideanLoss, SigmoidCrossEntropyLoss,
MultinomialLogisticLoss, InfogainLoss, HingeLoss, ContrastiveLoss. Arithmetic in
``netforge.ops.loss`` and ``netforge.ops.distance_losses``.

Every loss writes a scalar top; the net seeds that top's diff with the loss weight, which
backward reads (``_loss_weight``) and folds into the bottom gradients, as Caffe does.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from netforge import netforge_pb2 as pb
from netforge.data.records import blobproto_to_array
from netforge.errors import ConfigError, DataError
from netforge.layers.base import Layer, LossLayer
from netforge.layers.common import canonical_axis
from netforge.layers.registry import register
from netforge.ops import distance_losses as pair_ops
from netforge.ops import loss as ops

_NORMALIZATION = {
    pb.LossParameter.FULL: "FULL",
    pb.LossParameter.VALID: "VALID",
    pb.LossParameter.BATCH_SIZE: "BATCH_SIZE",
    pb.LossParameter.NONE: "NONE",
}


def _normalization(layer, default: str) -> str:
    """LossParameter.normalization, else the deprecated ``normalize`` (true: VALID, false:
    BATCH_SIZE), else the layer's own default."""
    lp = layer.param.loss_param
    if lp.HasField("normalization"):
        return _NORMALIZATION[lp.normalization]
    if lp.HasField("normalize"):
        return "VALID" if lp.normalize else "BATCH_SIZE"
    return default


def _ignore_label(layer) -> int | None:
    lp = layer.param.loss_param
    return lp.ignore_label if lp.HasField("ignore_label") else None


def _loss_weight(tops):
    """The loss weight the net seeded into the top's diff: a 0-d view of it, so that
    backward never reads it back to the host."""
    return tops[0].diff.reshape(-1)[:1].reshape(())


def _count(shape) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


def _check_num(layer, bottom_shapes, j: int = 1) -> None:
    """Caffe's LossLayer rule: bottom j has as many samples (first axis) as bottom 0."""
    first, other = tuple(bottom_shapes[0]), tuple(bottom_shapes[j])
    if not first or not other or first[0] != other[0]:
        raise layer.shape_error(
            f'bottom "{layer.param.bottom[j]}" {other} and bottom "{layer.param.bottom[0]}" '
            f"{first} must have the same first dimension (the batch size)"
        )


def _check_one_per_sample(layer, bottom_shapes, j: int) -> None:
    n, shape = bottom_shapes[0][0], tuple(bottom_shapes[j])
    if not shape or shape[0] != n or _count(shape) != n:
        raise layer.shape_error(
            f'bottom "{layer.param.bottom[j]}" has shape {shape}; it needs one value per '
            f"sample ({n})"
        )


def _check_labels(layer, bottom_shapes, axis: int) -> None:
    scores, labels = bottom_shapes[0], bottom_shapes[1]
    outer = 1
    for d in scores[:axis]:
        outer *= d
    inner = 1
    for d in scores[axis + 1 :]:
        inner *= d
    count = 1
    for d in labels:
        count *= d
    if count != outer * inner:
        raise layer.shape_error(
            f'label bottom "{layer.param.bottom[1]}" has shape {labels} ({count} values) but '
            f'bottom "{layer.param.bottom[0]}" {scores} needs {outer * inner} labels '
            f"(one per position outside axis {axis})"
        )


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """−log softmax(x)[label], normalised (VALID by default); optional top 1 = probabilities."""

    max_tops = 2

    def setup(self, bottom_shapes):
        self.ignore_label = _ignore_label(self)
        self.normalization = _normalization(self, "VALID")

    def reshape(self, bottom_shapes):
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]),
                                   self.label)
        _check_labels(self, bottom_shapes, self.axis)
        self.declare("prob", bottom_shapes[0])
        self.declare_dict("ws", ops.loss_workspace_shapes(bottom_shapes[0], self.axis, self.dtype))
        tops = [()]
        if len(self.param.top) == 2:
            tops.append(bottom_shapes[0])
        return tops

    def _kwargs(self) -> dict:
        return {"axis": self.axis, "ignore_label": self.ignore_label,
                "normalization": self.normalization, "ws": self.ws}

    def forward(self, bottoms, tops):
        try:
            ops.softmax_loss_forward(bottoms[0].data, bottoms[1].data, self.prob,
                                     out=tops[0].data, **self._kwargs())
        except ValueError as exc:  # a label outside [0, C)
            raise DataError(f'{self.label}: bottom "{self.param.bottom[1]}": {exc}') from None
        if len(tops) == 2:
            self.xp.copyto(tops[1].data, self.prob)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        ops.softmax_loss_backward(self.prob, bottoms[1].data, bottoms[0].diff,
                                  loss_weight=_loss_weight(tops), **self._kwargs())

    def backward_reads(self, bottoms, tops):
        """The labels; the probabilities are its own."""
        return (1,), ()


@register("Accuracy")
class AccuracyLayer(Layer):
    """Fraction of samples whose label is among the top_k scores; optional top 1 holds
    the per-class accuracy. No backward."""

    num_bottoms = 2
    min_tops = 1
    max_tops = 2
    has_backward = False
    no_gradient_bottoms = (0, 1)

    def setup(self, bottom_shapes):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        if self.top_k < 1:
            raise ConfigError(f"{self.label}: top_k must be >= 1")

    def reshape(self, bottom_shapes):
        self.axis = canonical_axis(self.param.accuracy_param.axis, len(bottom_shapes[0]),
                                   self.label)
        classes = bottom_shapes[0][self.axis]
        if self.top_k > classes:
            raise self.shape_error(f"top_k ({self.top_k}) exceeds the number of classes "
                                   f"({classes})")
        _check_labels(self, bottom_shapes, self.axis)
        self.declare_dict("ws", ops.loss_workspace_shapes(bottom_shapes[0], self.axis, self.dtype))
        tops = [()]
        if len(self.param.top) == 2:
            tops.append((classes,))
        return tops

    def forward(self, bottoms, tops):
        try:
            _, per_class = ops.accuracy(
                bottoms[0].data, bottoms[1].data, top_k=self.top_k, axis=self.axis,
                ignore_label=self.ignore_label, per_class=len(tops) == 2, ws=self.ws,
                out=tops[0].data)
        except ValueError as exc:
            raise DataError(f'{self.label}: bottom "{self.param.bottom[1]}": {exc}') from None
        if len(tops) == 2:
            tops[1].data[...] = self.xp.asarray(per_class)


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """Σ (a − b)² / (2N); the gradient reaches both bottoms (b is not a label here)."""

    no_gradient_bottoms = ()

    def reshape(self, bottom_shapes):
        _check_num(self, bottom_shapes)
        a, b = bottom_shapes
        if _count(a[1:]) != _count(b[1:]):
            raise self.shape_error(
                f'bottoms "{self.param.bottom[0]}" {tuple(a)} and "{self.param.bottom[1]}" '
                f"{tuple(b)} must hold the same number of values per sample"
            )
        self.declare("diff", a)
        return [()]

    def forward(self, bottoms, tops):
        pair_ops.euclidean_loss_forward(bottoms[0].data, bottoms[1].data, self.diff,
                                        out=tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        pair_ops.euclidean_loss_backward(
            self.diff, bottoms[0].diff if propagate_down[0] else None,
            bottoms[1].diff if propagate_down[1] else None, loss_weight=_loss_weight(tops))


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross-entropy of sigmoid(scores) against targets of the same count, in the stable
    form; normalization defaults to BATCH_SIZE (Caffe's historic choice); ignore_label
    drops targets equal to it."""

    def setup(self, bottom_shapes):
        self.ignore_label = _ignore_label(self)
        self.normalization = _normalization(self, "BATCH_SIZE")

    def reshape(self, bottom_shapes):
        _check_num(self, bottom_shapes)
        x, t = bottom_shapes
        if _count(x) != _count(t):
            raise self.shape_error(
                f'bottoms "{self.param.bottom[0]}" {tuple(x)} and "{self.param.bottom[1]}" '
                f"{tuple(t)} must have the same count"
            )
        self.declare_dict("ws", ops.sigmoid_cross_entropy_workspace_shapes(x, self.dtype))
        return [()]

    def _kwargs(self):
        return {"ignore_label": self.ignore_label, "normalization": self.normalization,
                "ws": self.ws}

    def forward(self, bottoms, tops):
        ops.sigmoid_cross_entropy_forward(bottoms[0].data, bottoms[1].data, out=tops[0].data,
                                          **self._kwargs())

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.sigmoid_cross_entropy_backward(bottoms[0].data, bottoms[1].data,
                                               bottoms[0].diff, loss_weight=_loss_weight(tops),
                                               **self._kwargs())


def _labelled_rows(layer, bottom_shapes):
    """Shared Reshape of MultinomialLogistic and Hinge: one label per sample, classes = all
    non-batch entries of bottom 0; returns the loss workspaces' spec."""
    _check_num(layer, bottom_shapes)
    _check_one_per_sample(layer, bottom_shapes, 1)
    n = bottom_shapes[0][0]
    return ops.loss_workspace_shapes((n, _count(bottom_shapes[0][1:])), 1, layer.dtype)


def _data_error(layer, exc: ValueError) -> DataError:
    return DataError(f'{layer.label}: bottom "{layer.param.bottom[1]}": {exc}')


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """−Σ log(max(p[label], 1e-20)) / N on probabilities (e.g. a Softmax's output)."""

    def reshape(self, bottom_shapes):
        self.declare_dict("ws", _labelled_rows(self, bottom_shapes))
        return [()]

    def forward(self, bottoms, tops):
        try:
            ops.multinomial_logistic_forward(bottoms[0].data, bottoms[1].data, ws=self.ws,
                                             out=tops[0].data)
        except ValueError as exc:
            raise _data_error(self, exc) from None

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.multinomial_logistic_backward(bottoms[0].data, bottoms[1].data,
                                              bottoms[0].diff, loss_weight=_loss_weight(tops),
                                              ws=self.ws)


@register("InfogainLoss")
class InfogainLossLayer(LossLayer):
    """−Σ_l H[label, l] · log softmax(x)[l], normalised (VALID by default). H (C×C) comes from
    ``infogain_param.source`` (a .binaryproto) or a third bottom; the softmax is applied
    inside, as in Caffe 1.0; an optional second top holds the probabilities."""

    max_bottoms = 3
    max_tops = 2
    no_gradient_bottoms = (1, 2)

    def setup(self, bottom_shapes):
        self.ignore_label = _ignore_label(self)
        self.normalization = _normalization(self, "VALID")
        self.h = None
        if len(bottom_shapes) < 3:
            self.h = self.xp.asarray(self._read_matrix().astype(self.dtype))

    def _read_matrix(self):
        source = self.param.infogain_loss_param.source
        if not source:
            raise ConfigError(f"{self.label}: give infogain_loss_param.source (a .binaryproto "
                              "holding H) or a third bottom")
        path = self.resolve_path(source)
        if not path.is_file():
            raise ConfigError(f"{self.label}: infogain matrix file {path} does not exist")
        blob = pb.BlobProto()
        try:
            blob.ParseFromString(path.read_bytes())
        except DecodeError:
            raise DataError(f"{self.label}: infogain matrix file {path} is damaged or not a "
                            "binary BlobProto") from None
        return blobproto_to_array(blob, where=f"infogain matrix file {path}")

    def reshape(self, bottom_shapes):
        _check_num(self, bottom_shapes)
        x = bottom_shapes[0]
        self.axis = canonical_axis(self.param.infogain_loss_param.axis, len(x), self.label)
        _check_labels(self, bottom_shapes, self.axis)
        classes = x[self.axis]
        h_count = _count(bottom_shapes[2]) if len(bottom_shapes) == 3 else self.h.size
        if h_count != classes * classes:
            where = (f'bottom "{self.param.bottom[2]}"' if len(bottom_shapes) == 3
                     else "the infogain matrix file")
            raise self.shape_error(f"{where} holds {h_count} values; {classes} classes need "
                                   f"{classes}x{classes}")
        self.declare("prob", x)
        self.declare_dict("ws", ops.infogain_workspace_shapes(x, self.axis, self.dtype))
        return [()] + ([tuple(x)] if len(self.param.top) == 2 else [])

    def _kwargs(self):
        return {"axis": self.axis, "ignore_label": self.ignore_label,
                "normalization": self.normalization, "ws": self.ws}

    def forward(self, bottoms, tops):
        h = bottoms[2].data if len(bottoms) == 3 else self.h
        try:
            ops.infogain_forward(bottoms[0].data, bottoms[1].data, h, self.prob,
                                 out=tops[0].data, **self._kwargs())
        except ValueError as exc:
            raise _data_error(self, exc) from None
        if len(tops) == 2:
            self.xp.copyto(tops[1].data, self.prob)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            h = bottoms[2].data if len(bottoms) == 3 else self.h
            ops.infogain_backward(self.prob, bottoms[1].data, h, bottoms[0].diff,
                                  loss_weight=_loss_weight(tops), **self._kwargs())


@register("HingeLoss")
class HingeLossLayer(LossLayer):
    """One-vs-all hinge on scores: Σ max(0, 1 ± x) / N, the sign negative at the label;
    ``norm: L2`` squares the margins."""

    def setup(self, bottom_shapes):
        self.norm = "L2" if self.param.hinge_loss_param.norm == pb.HingeLossParameter.L2 else "L1"

    def reshape(self, bottom_shapes):
        self.declare_dict("ws", _labelled_rows(self, bottom_shapes))
        self.declare("margins", bottom_shapes[0])
        return [()]

    def forward(self, bottoms, tops):
        try:
            pair_ops.hinge_forward(bottoms[0].data, bottoms[1].data, self.margins,
                                   norm=self.norm, ws=self.ws, out=tops[0].data)
        except ValueError as exc:
            raise _data_error(self, exc) from None

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            pair_ops.hinge_backward(self.margins, bottoms[1].data, bottoms[0].diff,
                                    norm=self.norm, loss_weight=_loss_weight(tops), ws=self.ws)


@register("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Siamese loss on feature pairs a, b (N, C) and pair labels y (1 similar, 0 not):
    Σ [y d² + (1 − y) max(margin − d, 0)²] / (2N); ``legacy_version`` uses
    max(margin − d², 0). Gradients reach a and b, not y."""

    min_bottoms = 3
    max_bottoms = 3
    no_gradient_bottoms = (2,)

    def setup(self, bottom_shapes):
        p = self.param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = p.legacy_version

    def reshape(self, bottom_shapes):
        _check_num(self, bottom_shapes)
        a, b = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        for j, shape in ((0, a), (1, b)):
            if len(shape) < 2 or any(d != 1 for d in shape[2:]):
                raise self.shape_error(f'bottom "{self.param.bottom[j]}" has shape {shape}; '
                                       "features must be (N, C) or (N, C, 1, 1)")
        if a[1] != b[1]:
            raise self.shape_error(f'bottoms "{self.param.bottom[0]}" {a} and '
                                   f'"{self.param.bottom[1]}" {b} have different channels')
        _check_one_per_sample(self, bottom_shapes, 2)
        self.declare("diff", a)
        self.declare("dist_sq", (a[0],))
        self.declare_dict("ws", pair_ops.contrastive_workspace_shapes(a[0], self.dtype))
        return [()]

    def _kwargs(self):
        return {"margin": self.margin, "legacy": self.legacy, "ws": self.ws}

    def forward(self, bottoms, tops):
        pair_ops.contrastive_forward(bottoms[0].data, bottoms[1].data, bottoms[2].data,
                                     self.diff, self.dist_sq, out=tops[0].data, **self._kwargs())

    def backward(self, tops, propagate_down, bottoms):
        pair_ops.contrastive_backward(
            self.diff, self.dist_sq, bottoms[2].data,
            bottoms[0].diff if propagate_down[0] else None,
            bottoms[1].diff if propagate_down[1] else None,
            loss_weight=_loss_weight(tops), **self._kwargs())

"""Loss and metric layers: SoftmaxWithLoss, Accuracy. Arithmetic in ``netforge.ops.loss``."""

from __future__ import annotations

from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, DataError
from netforge.layers.base import Layer, LossLayer
from netforge.layers.common import canonical_axis
from netforge.layers.registry import register
from netforge.ops import loss as ops
from netforge.ops._xp import allocate

_NORMALIZATION = {
    pb.LossParameter.FULL: "FULL",
    pb.LossParameter.VALID: "VALID",
    pb.LossParameter.BATCH_SIZE: "BATCH_SIZE",
    pb.LossParameter.NONE: "NONE",
}


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
        lp = self.param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.normalization = _NORMALIZATION[lp.normalization]
        elif lp.HasField("normalize"):  # deprecated boolean
            self.normalization = "VALID" if lp.normalize else "BATCH_SIZE"
        else:
            self.normalization = "VALID"

    def reshape(self, bottom_shapes):
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]),
                                   self.label)
        _check_labels(self, bottom_shapes, self.axis)
        self.prob = self.empty(bottom_shapes[0])
        self.ws = allocate(ops.loss_workspace_shapes(bottom_shapes[0], self.axis, self.dtype),
                           self.xp)
        tops = [()]
        if len(self.param.top) == 2:
            tops.append(bottom_shapes[0])
        return tops

    def _kwargs(self) -> dict:
        return {"axis": self.axis, "ignore_label": self.ignore_label,
                "normalization": self.normalization, "ws": self.ws}

    def forward(self, bottoms, tops):
        try:
            loss = ops.softmax_loss_forward(bottoms[0].data, bottoms[1].data, self.prob,
                                            **self._kwargs())
        except ValueError as exc:  # a label outside [0, C)
            raise DataError(f'{self.label}: bottom "{self.param.bottom[1]}": {exc}') from None
        tops[0].data[...] = loss
        if len(tops) == 2:
            self.xp.copyto(tops[1].data, self.prob)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        weight = float(tops[0].diff.reshape(-1)[0])  # the loss weight, seeded by the net
        ops.softmax_loss_backward(self.prob, bottoms[1].data, bottoms[0].diff,
                                  loss_weight=weight, **self._kwargs())


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
        self.ws = allocate(ops.loss_workspace_shapes(bottom_shapes[0], self.axis, self.dtype),
                           self.xp)
        tops = [()]
        if len(self.param.top) == 2:
            tops.append((classes,))
        return tops

    def forward(self, bottoms, tops):
        try:
            accuracy, per_class = ops.accuracy(
                bottoms[0].data, bottoms[1].data, top_k=self.top_k, axis=self.axis,
                ignore_label=self.ignore_label, per_class=len(tops) == 2, ws=self.ws)
        except ValueError as exc:
            raise DataError(f'{self.label}: bottom "{self.param.bottom[1]}": {exc}') from None
        tops[0].data[...] = accuracy
        if len(tops) == 2:
            tops[1].data[...] = self.xp.asarray(per_class)

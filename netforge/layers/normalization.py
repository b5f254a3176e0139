"""Normalisation layers: BatchNorm, Scale, Bias, MVN, LRN.
The arithmetic lives in ``netforge.ops.normalization``.

BatchNorm has no affine part (Caffe pairs it with ``Scale { bias_term: true }``); its three
blobs are running statistics that the solver never updates.
"""

from __future__ import annotations

import logging
from math import prod

from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError
from netforge.layers.base import Layer, ScratchBuffer, scratch_in
from netforge.layers.common import canonical_axis
from netforge.layers.registry import register
from netforge.ops import normalization as ops
from netforge.ops.fused import apply_epilogue
from netforge.ops.xp import view_as

log = logging.getLogger("netforge")


def _constant_filler(value: float) -> pb.FillerParameter:
    return pb.FillerParameter(type="constant", value=value)


def _runs_in_place(lp) -> bool:
    return bool(lp.top) and bool(lp.bottom) and lp.top[0] == lp.bottom[0]


@register("BatchNorm")
class BatchNormLayer(Layer):
    """y = (x − mean) / sqrt(var + eps) per channel (axis 1), over N and the spatial axes.

    TRAIN (``use_global_stats`` false, the default in the TRAIN phase): batch statistics,
    and the running accumulators are updated. TEST default: the stored statistics, divided
    by the accumulated scale factor (blob 2). Blobs: [0] mean sum (C,), [1] variance sum
    (C,), [2] scale factor (1,).
    """

    num_bottoms = 1
    num_tops = 1
    in_place_ok = True

    def setup(self, bottom_shapes):
        p = self.param.batch_norm_param
        # Decided once here, not per forward (Caffe's rule).
        self.use_global_stats = (bool(p.use_global_stats) if p.HasField("use_global_stats")
                                 else self.phase == "TEST")
        self.fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        shape = bottom_shapes[0]
        if len(shape) == 0:
            raise self.shape_error("needs a bottom with at least one axis, got a scalar")
        self.channels = 1 if len(shape) == 1 else shape[1]
        # Data-parallel training: None keeps Caffe's per-rank batch statistics; ``synchronise``
        # sets the ranks' reducer (batch_norm_param.sync_statistics asks for it).
        self.reducer = None
        self.sync_requested = bool(p.sync_statistics)
        zero = _constant_filler(0.0)
        for blob_shape in ((self.channels,), (self.channels,), (1,)):
            self.add_param(blob_shape, zero)
        self._freeze_statistics()

    def _freeze_statistics(self):
        """The statistics are never learned: add ``param { lr_mult: 0 decay_mult: 0 }`` for
        each blob the prototxt leaves out, and override any nonzero lr_mult it gives."""
        specs = self.param.param
        for k in range(len(self.blobs)):
            if k >= len(specs):
                specs.add(lr_mult=0.0, decay_mult=0.0)
            elif specs[k].lr_mult != 0:
                log.warning("%s: batch normalization statistics cannot be learned; "
                            "param %d lr_mult %g set to 0", self.label, k, specs[k].lr_mult)
                specs[k].lr_mult = 0.0

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) >= 2 and shape[1] != self.channels:
            raise self.shape_error(f"bottom shape {shape} has {shape[1]} channels but the "
                                   f"statistics have {self.channels}")
        n = shape[0]
        self.view = (n, self.channels, prod(shape) // max(n * self.channels, 1))
        c = self.channels
        for name in ("mean", "var", "inv_std"):
            self.declare(name, (c,))
        if self.use_global_stats:
            self.declare("x_norm", None)  # backward needs only inv_std
            self.declare_dict("ws", {"factor": ((1,), self.dtype)})
        else:
            # Kept for backward even when a later in-place layer (Scale) overwrites the top.
            self.declare("x_norm", self.view, kept_for_backward=True)
            self.declare_dict("ws", ops.batch_norm_workspace_shapes(self.view, self.dtype))
        return [shape]

    def synchronise(self, reducer) -> None:
        """Normalise with the statistics of the global batch, all ranks' records together
        (forward: Σ x and Σ (x - mean)^2 summed over the ranks; backward: the two channel
        sums through them), instead of each rank's own (Caffe's). ``reducer`` sums a small
        array over the ranks in place (``reducer.sum_in_place``) and has ``world``. The
        running statistics are then equal on every rank."""
        self.reducer = reducer

    def _reduced(self) -> dict:
        if self.reducer is None or self.use_global_stats:
            return {}
        count = self.view[0] * self.view[2] * self.reducer.world
        return {"reduce": self.reducer.sum_in_place, "count": count}

    def scratch_buffers(self) -> list[ScratchBuffer]:
        """Backward's (N, C, S) temporary holds nothing between calls: the graph shares it
        with other layers' scratch (with use_global_stats there is none)."""
        return scratch_in(self.ws, ["tmp"])

    def forward(self, bottoms, tops, *, epilogue=None):
        """``epilogue``: the in-place Scale and ReLU after this layer, fused in by the graph
        (``netforge.graph.fusion``): applied in the normalising pass (stored statistics) or
        in one pass after it (batch statistics; x_norm keeps the normalised values)."""
        x = view_as(bottoms[0].data, self.view)
        y = view_as(tops[0].data, self.view)
        self.compute_statistics()
        if self.use_global_stats:
            if epilogue is None:
                ops.batch_norm_forward_global(x, y, self.mean, self.inv_std)
            else:
                apply_epilogue(x, y, None, epilogue.with_changes(mean=self.mean,
                                                                 inv_std=self.inv_std))
            return
        reduced = self._reduced()
        ops.batch_norm_forward_train(x, y, self.x_norm, self.mean, self.var, self.inv_std,
                                     eps=self.eps, ws=self.ws, **reduced)
        count = reduced.get("count", self.view[0] * self.view[2])
        mean_acc, var_acc, factor_acc = (blob.data for blob in self.blobs)
        ops.batch_norm_update_stats(mean_acc, var_acc, factor_acc, self.mean, self.var,
                                    fraction=self.fraction, count=count, ws=self.ws)
        if epilogue is not None:
            apply_epilogue(y, y, None, epilogue)

    def compute_statistics(self) -> None:
        """With stored statistics: mean and inv_std from the accumulators (each forward, as
        Caffe does; a convolution that absorbs this layer calls it before it runs). With
        batch statistics the normalising kernel computes them itself."""
        if self.use_global_stats:
            mean_acc, var_acc, factor_acc = (blob.data for blob in self.blobs)
            ops.batch_norm_global_stats(mean_acc, var_acc, factor_acc, self.mean, self.inv_std,
                                        eps=self.eps, ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy = view_as(tops[0].diff, self.view)
        dx = view_as(bottoms[0].diff, self.view)
        if self.use_global_stats:
            ops.batch_norm_backward_global(dy, self.inv_std, dx)
        else:
            ops.batch_norm_backward_train(dy, self.x_norm, self.inv_std, dx, ws=self.ws,
                                          **self._reduced())

    def backward_reads(self, bottoms, tops):
        """Its own x_norm copy and inverse deviations, no blob data."""
        return (), ()


class _BroadcastLayer(Layer):
    """Scale and Bias: bottom[0] combined with a blob that covers ``num_axes`` of its axes
    from ``axis`` on, broadcast over the rest. The blob is learned (one bottom) or is
    bottom[1]. Computation runs on an (outer, dim, inner) view of bottom[0]."""

    min_bottoms = 1
    max_bottoms = 2
    num_tops = 1
    in_place_ok = True

    def _learned_shape(self, p, shape):
        """The shape of the learned blob: shape[axis : axis + num_axes] (-1: to the end)."""
        axis = canonical_axis(p.axis, len(shape), self.label)
        num_axes = p.num_axes
        if num_axes < -1:
            raise ConfigError(f"{self.label}: num_axes must be >= 0, or -1 for all axes "
                              f"from axis on; got {num_axes}")
        if num_axes >= 0 and len(shape) < axis + num_axes:
            raise self.shape_error(f"num_axes {num_axes} from axis {axis} extends past "
                                   f"bottom shape {tuple(shape)}")
        return tuple(shape[axis:] if num_axes == -1 else shape[axis:axis + num_axes])

    def _broadcast_view(self, p, shape, operand_shape, what):
        """(outer, dim, inner) for bottom[0] of ``shape`` and an operand of
        ``operand_shape``; a scalar operand is applied from axis 0 (any axis is the same)."""
        axis = 0 if len(operand_shape) == 0 else canonical_axis(p.axis, len(shape), self.label)
        end = axis + len(operand_shape)
        if end > len(shape) or tuple(shape[axis:end]) != tuple(operand_shape):
            raise self.shape_error(f"{what} shape {tuple(operand_shape)} does not match "
                                   f"bottom shape {tuple(shape)} from axis {axis}")
        return (prod(shape[:axis]), prod(operand_shape), prod(shape[end:]))

    @staticmethod
    def _flat(array):
        """A (dim,) view of a parameter or bottom[1] array (0-D included)."""
        return array.reshape(-1)


@register("Scale")
class ScaleLayer(_BroadcastLayer):
    """y = x · s (+ b), s broadcast from ``axis``. One bottom: s is learned (filler default
    constant 1). Two bottoms: s is bottom[1] and gets a gradient. ``bias_term`` adds a
    learned bias of s's shape (``bias_filler`` default constant 0) as the last blob."""

    def setup(self, bottom_shapes):
        p = self.param.scale_param
        shape = bottom_shapes[0]
        self.two_bottoms = len(bottom_shapes) == 2
        if self.two_bottoms:
            operand_shape = tuple(bottom_shapes[1])
            canonical_axis(p.axis, len(shape), self.label)  # validated as Caffe does
        else:
            operand_shape = self._learned_shape(p, shape)
            filler = p.filler if p.HasField("filler") else _constant_filler(1.0)
            self.add_param(operand_shape, filler)
        self.bias_index = None
        if p.bias_term:
            self.add_param(operand_shape, p.bias_filler)  # unset: constant 0
            self.bias_index = len(self.blobs) - 1

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        operand_shape = (tuple(bottom_shapes[1]) if self.two_bottoms
                         else self.blobs[0].shape)
        self.view = self._broadcast_view(self.param.scale_param, shape, operand_shape, "scale")
        # Run in place, forward overwrites x, which the scale's gradient needs (Caffe's temp_).
        self.declare("bottom_copy", shape if _runs_in_place(self.param) else None)
        self.copy_borrowed = False
        self.declare_dict("ws", ops.channel_sum_workspace_shapes(self.view, self.dtype))
        return [shape]

    def _scale(self, bottoms):
        return bottoms[1] if self.two_bottoms else self.blobs[0]

    def borrow_bottom_copy(self, array) -> None:
        """Use ``array`` (the bottom's shape), which the layer before already fills with a
        copy of this layer's bottom each forward (an in-place BatchNorm's x_norm), as the
        copy that backward reads: one copy of the activation instead of two (the graph's
        BatchNorm→Scale pass, netforge.graph.train_memory)."""
        self.bottom_copy = array
        self.copy_borrowed = True

    def forward(self, bottoms, tops):
        if tops[0] is bottoms[0] and self.need_backward and not self.copy_borrowed:
            if self.bottom_copy is None or self.bottom_copy.shape != bottoms[0].shape:
                self.bottom_copy = self.empty(bottoms[0].shape)
            self.xp.copyto(self.bottom_copy, bottoms[0].data)
        y = view_as(tops[0].data, self.view)
        ops.scale_forward(view_as(bottoms[0].data, self.view),
                          self._flat(self._scale(bottoms).data), y)
        if self.bias_index is not None:
            ops.bias_forward(y, self._flat(self.blobs[self.bias_index].data), y)

    def backward(self, tops, propagate_down, bottoms):
        # Parameter gradients first: run in place, dx overwrites dy.
        dy = view_as(tops[0].diff, self.view)
        if self.bias_index is not None and self.param_propagate_down[self.bias_index]:
            ops.channel_sums(dy, self._flat(self.blobs[self.bias_index].diff), accumulate=True,
                             ws=self.ws)
        scale = self._scale(bottoms)
        wants_scale = (propagate_down[1] if self.two_bottoms
                       else self.param_propagate_down[0])
        if wants_scale:
            x = self.bottom_copy if tops[0] is bottoms[0] else bottoms[0].data
            # A learned scale accumulates its gradient; bottom[1]'s is assigned.
            ops.channel_sums(dy, self._flat(scale.diff), b=view_as(x, self.view),
                             accumulate=not self.two_bottoms, ws=self.ws)
        if propagate_down[0]:
            ops.scale_backward(dy, self._flat(scale.data), view_as(bottoms[0].diff, self.view))

    def backward_reads(self, bottoms, tops):
        """x for the scale gradient (its own copy when in place), and the scale bottom."""
        second = (1,) if self.two_bottoms else ()
        if tops[0] is bottoms[0]:
            return second, ()
        return (0, *second), ()


@register("Bias")
class BiasLayer(_BroadcastLayer):
    """y = x + b, b broadcast from ``axis``: learned (one bottom; filler default constant
    0) or bottom[1], which then gets a gradient."""

    def setup(self, bottom_shapes):
        p = self.param.bias_param
        self.two_bottoms = len(bottom_shapes) == 2
        if self.two_bottoms:
            canonical_axis(p.axis, len(bottom_shapes[0]), self.label)
        else:
            self.add_param(self._learned_shape(p, bottom_shapes[0]), p.filler)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        operand_shape = (tuple(bottom_shapes[1]) if self.two_bottoms
                         else self.blobs[0].shape)
        self.view = self._broadcast_view(self.param.bias_param, shape, operand_shape, "bias")
        self.declare_dict("ws", ops.channel_sum_workspace_shapes(self.view, self.dtype))
        return [shape]

    def _bias(self, bottoms):
        return bottoms[1] if self.two_bottoms else self.blobs[0]

    def forward(self, bottoms, tops):
        ops.bias_forward(view_as(bottoms[0].data, self.view),
                         self._flat(self._bias(bottoms).data), view_as(tops[0].data, self.view))

    def backward(self, tops, propagate_down, bottoms):
        dy = view_as(tops[0].diff, self.view)
        wants_bias = propagate_down[1] if self.two_bottoms else self.param_propagate_down[0]
        if wants_bias:
            ops.channel_sums(dy, self._flat(self._bias(bottoms).diff),
                             accumulate=not self.two_bottoms, ws=self.ws)
        if propagate_down[0] and tops[0] is not bottoms[0]:
            self.xp.copyto(bottoms[0].diff, tops[0].diff)

    def backward_reads(self, bottoms, tops):
        """Sums and copies of diffs."""
        return (), ()


@register("MVN")
class MVNLayer(Layer):
    """Mean-variance normalisation per sample and channel (or per sample across channels):
    y = (x − mean) / (std + eps), or only x − mean without ``normalize_variance``."""

    num_bottoms = 1
    num_tops = 1
    in_place_ok = True

    def setup(self, bottom_shapes):
        p = self.param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) == 0:
            raise self.shape_error("needs a bottom with at least one axis, got a scalar")
        channels = shape[1] if len(shape) > 1 else 1
        rows = shape[0] if self.across_channels else shape[0] * channels
        self.view = (rows, prod(shape) // max(rows, 1))
        self.declare("sigma", (rows,))
        # Backward reads y; a copy survives a later in-place layer writing over the top.
        self.declare("y_copy", self.view)
        self.declare_dict("ws", ops.mvn_workspace_shapes(self.view, self.dtype))
        return [shape]

    def forward(self, bottoms, tops):
        y = view_as(tops[0].data, self.view)
        ops.mvn_forward(view_as(bottoms[0].data, self.view), y, self.sigma,
                        normalize_variance=self.normalize_variance, eps=self.eps, ws=self.ws)
        self.xp.copyto(self.y_copy, y)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.mvn_backward(view_as(tops[0].diff, self.view), self.y_copy, self.sigma,
                             view_as(bottoms[0].diff, self.view),
                             normalize_variance=self.normalize_variance, eps=self.eps,
                             ws=self.ws)


@register("LRN")
class LRNLayer(Layer):
    """Local response normalisation, ACROSS_CHANNELS (y = x·(k + α/n·Σ x²)^−β over n
    neighbouring channels) or WITHIN_CHANNEL (y = x·(1 + α/n²·Σ x²)^−β over an n×n spatial
    window, zero padded, as Caffe's pooling-built version computes it)."""

    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0:
            raise ConfigError(f"{self.label}: local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = (ops.ACROSS_CHANNELS if p.norm_region == pb.LRNParameter.ACROSS_CHANNELS
                       else ops.WITHIN_CHANNEL)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) != 4:
            raise self.shape_error(f"needs a 4-D bottom (N, C, H, W), got shape {shape}")
        self.declare("scale", shape)  # k + α/n·Σx², kept for backward
        self.declare("inv_pow", shape)  # scale^−β, kept for backward
        self.declare_dict("ws", ops.lrn_workspace_shapes(shape, self.dtype))
        return [shape]

    def forward(self, bottoms, tops):
        ops.lrn_forward(bottoms[0].data, tops[0].data, self.scale, self.inv_pow,
                        size=self.size, alpha=self.alpha, beta=self.beta, k=self.k,
                        region=self.region, ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.lrn_backward(tops[0].diff, bottoms[0].data, self.scale, self.inv_pow,
                             bottoms[0].diff, size=self.size, alpha=self.alpha,
                             beta=self.beta, region=self.region, ws=self.ws)

    def backward_reads(self, bottoms, tops):
        """x and its own scale."""
        return (0,), ()

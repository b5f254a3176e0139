"""Elementwise activations (all may run in place): ReLU, Sigmoid, TanH, Dropout, PReLU, ELU,
Swish, AbsVal, BNLL, Power, Exp, Log, Threshold, Clip.
The arithmetic lives in ``netforge.ops.neuron``."""

from __future__ import annotations

from math import prod

from netforge.errors import ConfigError
from netforge.layers.base import NeuronLayer, ScratchBuffer, scratch_in
from netforge.layers.registry import register
from netforge.ops import neuron as ops
from netforge.ops.xp import view_as


@register("ReLU")
class ReLULayer(NeuronLayer):
    """y = max(x, 0) + negative_slope · min(x, 0)."""

    def setup(self, bottom_shapes):
        self.slope = float(self.param.relu_param.negative_slope)

    def reshape(self, bottom_shapes):
        self.declare_dict("ws", ops.relu_workspace_shapes(bottom_shapes[0]))
        return [bottom_shapes[0]]

    def scratch_buffers(self) -> list[ScratchBuffer]:
        return scratch_in(self.ws)  # filled and used within one call: the graph shares it

    def forward(self, bottoms, tops):
        ops.relu_forward(bottoms[0].data, tops[0].data, negative_slope=self.slope, ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        # In place, bottom data already holds y; y > 0 exactly where x > 0, so y serves.
        if propagate_down[0]:
            ops.relu_backward(tops[0].diff, tops[0].data, bottoms[0].diff,
                              negative_slope=self.slope, ws=self.ws)

    def backward_reads(self, bottoms, tops):
        """The gradient gate is y > 0 (y serves for x, in place or not)."""
        return (), (0,)


class _SmoothNeuronLayer(NeuronLayer):
    """Sigmoid/TanH/BNLL: backward from the top data (so in place needs no copy of x);
    one scratch array."""

    def reshape(self, bottom_shapes):
        self.declare_dict("ws", ops.tmp_workspace_shapes(bottom_shapes[0], self.dtype))
        return [bottom_shapes[0]]


@register("Sigmoid")
class SigmoidLayer(_SmoothNeuronLayer):
    def forward(self, bottoms, tops):
        ops.sigmoid_forward(bottoms[0].data, tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.sigmoid_backward(tops[0].diff, tops[0].data, bottoms[0].diff, ws=self.ws)

    def backward_reads(self, bottoms, tops):
        """The derivative comes from y."""
        return (), (0,)


@register("TanH")
class TanHLayer(_SmoothNeuronLayer):
    def forward(self, bottoms, tops):
        ops.tanh_forward(bottoms[0].data, tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.tanh_backward(tops[0].diff, tops[0].data, bottoms[0].diff, ws=self.ws)

    def backward_reads(self, bottoms, tops):
        """The derivative comes from y."""
        return (), (0,)


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """Inverted dropout: in TRAIN keep with probability 1 − p and scale by 1/(1 − p);
    identity in TEST."""

    def setup(self, bottom_shapes):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"{self.label}: dropout_ratio must be in [0, 1), got {self.ratio}")
        self.random_stream()

    def reshape(self, bottom_shapes):
        self.declare("mask", bottom_shapes[0], self.xp.bool_)
        self.random.reserve(prod(bottom_shapes[0]))
        return [bottom_shapes[0]]

    def forward(self, bottoms, tops):
        if self.phase == "TRAIN":
            ops.dropout_forward(bottoms[0].data, tops[0].data, self.mask, self.ratio,
                                self.random)
        elif tops[0].data is not bottoms[0].data:
            self.xp.copyto(tops[0].data, bottoms[0].data)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        if self.phase == "TRAIN":
            ops.dropout_backward(tops[0].diff, self.mask, self.ratio, bottoms[0].diff)
        elif tops[0].diff is not bottoms[0].diff:
            self.xp.copyto(bottoms[0].diff, tops[0].diff)

    def backward_reads(self, bottoms, tops):
        """Its own mask, no blob data."""
        return (), ()


class _BottomKeepingLayer(NeuronLayer):
    """A neuron layer whose backward reads the bottom data x. Run in place, forward
    overwrites x with y, so x is copied aside first (Caffe's PReLU keeps ``bottom_memory_``
    for the same reason); out of place, backward reads the bottom blob itself."""

    def needs_bottom(self) -> bool:
        """Whether backward reads x at all (Power with a constant derivative does not)."""
        return True

    def reshape(self, bottom_shapes):
        lp = self.param
        in_place = bool(lp.top) and bool(lp.bottom) and lp.top[0] == lp.bottom[0]
        keep = in_place and self.needs_bottom()
        self.declare("bottom_copy", bottom_shapes[0] if keep else None)
        self.declare_dict("ws", {"tmp": (tuple(bottom_shapes[0]), self.dtype)})
        return [bottom_shapes[0]]

    def keep_bottom(self, bottoms, tops) -> None:
        """Call first thing in forward."""
        if tops[0] is not bottoms[0] or not self.needs_bottom():
            return
        if self.bottom_copy is None or self.bottom_copy.shape != bottoms[0].shape:
            self.bottom_copy = self.empty(bottoms[0].shape)  # in place, unannounced
        self.xp.copyto(self.bottom_copy, bottoms[0].data)

    def bottom_data(self, bottoms, tops):
        """x as it was before forward."""
        return self.bottom_copy if tops[0] is bottoms[0] else bottoms[0].data


@register("PReLU")
class PReLULayer(_BottomKeepingLayer):
    """y = max(x, 0) + a_c · min(x, 0) with a learned slope a per channel (axis 1), or one
    slope for all (``channel_shared``; a 0-D blob, as Caffe stores it)."""

    def setup(self, bottom_shapes):
        p = self.param.prelu_param
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.shape_error(f"needs a bottom with a channel axis (>= 2 axes), got "
                                   f"shape {tuple(shape)}")
        self.channel_shared = bool(p.channel_shared)
        filler = type(p.filler)()
        if p.HasField("filler"):
            filler.CopyFrom(p.filler)
        else:
            filler.type, filler.value = "constant", 0.25
        self.add_param(() if self.channel_shared else (shape[1],), filler)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2 or (not self.channel_shared and shape[1] != self.blobs[0].count):
            raise self.shape_error(f"bottom shape {shape} does not have the "
                                   f"{self.blobs[0].count} channels of its slopes")
        tops = super().reshape(bottom_shapes)
        count = prod(shape)
        # A shared slope is one "channel" spanning everything.
        self.view = ((1, 1, count) if self.channel_shared
                     else (shape[0], shape[1], count // (shape[0] * shape[1])))
        self.declare_dict("ws", ops.prelu_workspace_shapes(self.view, self.dtype))
        return tops

    def forward(self, bottoms, tops):
        self.keep_bottom(bottoms, tops)
        ops.prelu_forward(view_as(bottoms[0].data, self.view), self.blobs[0].data.reshape(-1),
                          view_as(tops[0].data, self.view), ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        slope = self.blobs[0]
        dslope = slope.diff.reshape(-1) if self.param_propagate_down[0] else None
        dx = view_as(bottoms[0].diff, self.view) if propagate_down[0] else None
        if dslope is None and dx is None:
            return
        x = view_as(self.bottom_data(bottoms, tops), self.view)
        ops.prelu_backward(view_as(tops[0].diff, self.view), x, slope.data.reshape(-1), dx,
                           dslope, ws=self.ws)


@register("ELU")
class ELULayer(NeuronLayer):
    """y = x if x > 0 else alpha · (exp(x) − 1)."""

    def setup(self, bottom_shapes):
        self.alpha = float(self.param.elu_param.alpha)

    def reshape(self, bottom_shapes):
        self.declare_dict("ws", ops.elu_workspace_shapes(bottom_shapes[0], self.dtype))
        return [bottom_shapes[0]]

    def forward(self, bottoms, tops):
        ops.elu_forward(bottoms[0].data, tops[0].data, alpha=self.alpha, ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        # Caffe tests the sign of what the bottom blob holds: x, or y when in place.
        if propagate_down[0]:
            ops.elu_backward(tops[0].diff, bottoms[0].data, tops[0].data, bottoms[0].diff,
                             alpha=self.alpha, ws=self.ws)


@register("Swish")
class SwishLayer(NeuronLayer):
    """y = x · sigmoid(beta · x)."""

    def setup(self, bottom_shapes):
        self.beta = float(self.param.swish_param.beta)

    def reshape(self, bottom_shapes):
        self.declare("sigmoid", bottom_shapes[0])  # sigmoid(beta x), kept for backward
        self.declare_dict("ws", ops.tmp_workspace_shapes(bottom_shapes[0], self.dtype))
        return [bottom_shapes[0]]

    def forward(self, bottoms, tops):
        ops.swish_forward(bottoms[0].data, tops[0].data, self.sigmoid, beta=self.beta)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.swish_backward(tops[0].diff, tops[0].data, self.sigmoid, bottoms[0].diff,
                               beta=self.beta, ws=self.ws)


@register("AbsVal")
class AbsValLayer(_BottomKeepingLayer):
    """y = |x|. (Caffe refuses to run it in place; here in place keeps a copy of x.)"""

    def forward(self, bottoms, tops):
        self.keep_bottom(bottoms, tops)
        ops.absval_forward(bottoms[0].data, tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.absval_backward(tops[0].diff, self.bottom_data(bottoms, tops),
                                bottoms[0].diff, ws=self.ws)


@register("BNLL")
class BNLLLayer(_SmoothNeuronLayer):
    """y = log(1 + exp(x)), the binomial normal log-likelihood, computed stably."""

    def forward(self, bottoms, tops):
        ops.bnll_forward(bottoms[0].data, tops[0].data, ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:  # from the top data, so in place needs no copy
            ops.bnll_backward(tops[0].diff, tops[0].data, bottoms[0].diff, ws=self.ws)

    def backward_reads(self, bottoms, tops):
        """The derivative comes from y."""
        return (), (0,)


@register("Power")
class PowerLayer(_BottomKeepingLayer):
    """y = (shift + scale · x) ^ power."""

    def setup(self, bottom_shapes):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)

    def needs_bottom(self):
        return self.power * self.scale != 0 and self.power != 1

    def forward(self, bottoms, tops):
        self.keep_bottom(bottoms, tops)
        ops.power_forward(bottoms[0].data, tops[0].data, power=self.power, scale=self.scale,
                          shift=self.shift)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.power_backward(tops[0].diff, self.bottom_data(bottoms, tops), bottoms[0].diff,
                               power=self.power, scale=self.scale, shift=self.shift,
                               ws=self.ws)


def _check_base(layer, base: float) -> float:
    """Caffe's rule for Exp and Log: base -1 (meaning e) or strictly positive."""
    if base != -1 and base <= 0:
        raise ConfigError(f"{layer.label}: base must be strictly positive (or -1 for e), "
                          f"got {base:g}")
    return base


@register("Exp")
class ExpLayer(NeuronLayer):
    """y = base ^ (shift + scale · x); base −1 means e."""

    def setup(self, bottom_shapes):
        p = self.param.exp_param
        self.base = _check_base(self, float(p.base))
        self.scale, self.shift = float(p.scale), float(p.shift)

    def forward(self, bottoms, tops):
        ops.exp_forward(bottoms[0].data, tops[0].data, base=self.base, scale=self.scale,
                        shift=self.shift)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:  # from the top data: works in place
            ops.exp_backward(tops[0].diff, tops[0].data, bottoms[0].diff, base=self.base,
                             scale=self.scale)

    def backward_reads(self, bottoms, tops):
        """The derivative comes from y."""
        return (), (0,)


@register("Log")
class LogLayer(_BottomKeepingLayer):
    """y = log_base(shift + scale · x); base −1 means e."""

    def setup(self, bottom_shapes):
        p = self.param.log_param
        self.base = _check_base(self, float(p.base))
        if self.base == 1:
            raise ConfigError(f"{self.label}: base 1 has no logarithm")
        self.scale, self.shift = float(p.scale), float(p.shift)

    def forward(self, bottoms, tops):
        self.keep_bottom(bottoms, tops)
        ops.log_forward(bottoms[0].data, tops[0].data, base=self.base, scale=self.scale,
                        shift=self.shift)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.log_backward(tops[0].diff, self.bottom_data(bottoms, tops), bottoms[0].diff,
                             base=self.base, scale=self.scale, shift=self.shift, ws=self.ws)


@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """y = 1 if x > threshold else 0. No gradient (Caffe's backward is NOT_IMPLEMENTED)."""

    has_backward = False

    def setup(self, bottom_shapes):
        self.threshold = float(self.param.threshold_param.threshold)

    def forward(self, bottoms, tops):
        ops.threshold_forward(bottoms[0].data, tops[0].data, threshold=self.threshold)

    def backward(self, tops, propagate_down, bottoms):
        if any(propagate_down):
            raise NotImplementedError(f"{self.label} has no backward (as in Caffe)")


@register("Clip")
class ClipLayer(_BottomKeepingLayer):
    """y = max(min, min(x, max)); the gradient passes where min <= x <= max."""

    def setup(self, bottom_shapes):
        p = self.param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise ConfigError(f"{self.label}: clip_param needs both min and max")
        self.lo, self.hi = float(p.min), float(p.max)
        if self.lo > self.hi:
            raise ConfigError(f"{self.label}: clip_param min ({self.lo:g}) is greater than "
                              f"max ({self.hi:g})")

    def forward(self, bottoms, tops):
        self.keep_bottom(bottoms, tops)
        ops.clip_forward(bottoms[0].data, tops[0].data, lo=self.lo, hi=self.hi)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.clip_backward(tops[0].diff, self.bottom_data(bottoms, tops), bottoms[0].diff,
                              lo=self.lo, hi=self.hi, ws=self.ws)

"""Elementwise activations: ReLU, Sigmoid, TanH, Dropout (all may run in place).
The arithmetic lives in ``netforge.ops.neuron``."""

from __future__ import annotations

from netforge.errors import ConfigError
from netforge.layers.base import NeuronLayer
from netforge.layers.registry import register
from netforge.ops import neuron as ops
from netforge.ops._xp import allocate


@register("ReLU")
class ReLULayer(NeuronLayer):
    """y = max(x, 0) + negative_slope · min(x, 0)."""

    def setup(self, bottom_shapes):
        self.slope = float(self.param.relu_param.negative_slope)

    def reshape(self, bottom_shapes):
        self.ws = allocate(ops.relu_workspace_shapes(bottom_shapes[0]), self.xp)
        return [bottom_shapes[0]]

    def forward(self, bottoms, tops):
        ops.relu_forward(bottoms[0].data, tops[0].data, negative_slope=self.slope, ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        # In place, bottom data already holds y; y > 0 exactly where x > 0, so y serves.
        if propagate_down[0]:
            ops.relu_backward(tops[0].diff, tops[0].data, bottoms[0].diff,
                              negative_slope=self.slope, ws=self.ws)


class _SmoothNeuronLayer(NeuronLayer):
    """Sigmoid/TanH: backward from the top data; a scratch array for the in-place case."""

    def reshape(self, bottom_shapes):
        self.ws = allocate(ops.tmp_workspace_shapes(bottom_shapes[0], self.dtype), self.xp)
        return [bottom_shapes[0]]


@register("Sigmoid")
class SigmoidLayer(_SmoothNeuronLayer):
    def forward(self, bottoms, tops):
        ops.sigmoid_forward(bottoms[0].data, tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.sigmoid_backward(tops[0].diff, tops[0].data, bottoms[0].diff, ws=self.ws)


@register("TanH")
class TanHLayer(_SmoothNeuronLayer):
    def forward(self, bottoms, tops):
        ops.tanh_forward(bottoms[0].data, tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.tanh_backward(tops[0].diff, tops[0].data, bottoms[0].diff, ws=self.ws)


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """Inverted dropout: in TRAIN keep with probability 1 − p and scale by 1/(1 − p);
    identity in TEST."""

    def setup(self, bottom_shapes):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"{self.label}: dropout_ratio must be in [0, 1), got {self.ratio}")
        self.rng = self.ctx.rng

    def reshape(self, bottom_shapes):
        self.mask = self.xp.empty(bottom_shapes[0], dtype=self.xp.bool_)
        return [bottom_shapes[0]]

    def forward(self, bottoms, tops):
        if self.phase == "TRAIN":
            ops.dropout_forward(bottoms[0].data, tops[0].data, self.mask, self.ratio, self.rng)
        elif tops[0].data is not bottoms[0].data:
            self.xp.copyto(tops[0].data, bottoms[0].data)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        if self.phase == "TRAIN":
            ops.dropout_backward(tops[0].diff, self.mask, self.ratio, bottoms[0].diff)
        elif tops[0].diff is not bottoms[0].diff:
            self.xp.copyto(bottoms[0].diff, tops[0].diff)

"""Knowledge distillation (Hinton et al. 2015, "Distilling the knowledge in a neural network").

``Distillation`` bottoms: the student's logits, the teacher's logits (N×C...; softmax over
axis 1). With p = softmax(teacher / T) and q = softmax(student / T):
    loss = T² · (1/N) Σ_n KL(p_n ‖ q_n),     ∂loss/∂student = T · (q − p) / N
The T² keeps the soft targets' gradients on the scale of the hard-label loss, so the two
combine by loss_weight. The teacher gets no gradient; its layers are frozen with
``param { lr_mult: 0 }`` and their weights loaded by layer name with ``--weights``.
"""

from __future__ import annotations

from netforge.errors import ConfigError
from netforge.layers.base import LossLayer
from netforge.layers.registry import register


@register("Distillation")
class DistillationLayer(LossLayer):
    def setup(self, bottom_shapes):
        self.temperature = float(self.param.distillation_param.temperature)
        if self.temperature <= 0:
            raise ConfigError(f"{self.label}: distillation_param.temperature must be > 0")

    def reshape(self, bottom_shapes):
        student, teacher = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if student != teacher or len(student) < 2:
            raise self.shape_error(
                f'student "{self.param.bottom[0]}" {student} and teacher '
                f'"{self.param.bottom[1]}" {teacher} must have the same shape (N×C...)')
        self.declare("q", student)
        self.declare("p", student)
        return [()]

    def _softmax(self, logits, out):
        xp = self.xp
        scaled = logits / self.temperature
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        xp.exp(scaled, out=out)
        out /= out.sum(axis=1, keepdims=True)

    def forward(self, bottoms, tops):
        xp = self.xp
        self._softmax(bottoms[0].data, self.q)
        self._softmax(bottoms[1].data, self.p)
        tiny = xp.finfo(self.q.dtype).tiny
        kl = self.p * (xp.log(xp.maximum(self.p, tiny)) - xp.log(xp.maximum(self.q, tiny)))
        n = bottoms[0].shape[0]
        tops[0].data[...] = self.temperature ** 2 * kl.sum() / n

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        weight = float(tops[0].diff.reshape(-1)[0])
        n = bottoms[0].shape[0]
        bottoms[0].diff[...] = (self.temperature * weight / n) * (self.q - self.p)

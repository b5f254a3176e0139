"""Distillation loss: T²·KL(softmax(teacher/T) ‖ softmax(student/T)) against a loop written from
Hinton et al.'s definition, a float64 central-difference gradient check, and no gradient to
the teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest

from netforge.errors import ConfigError, ShapeError
from netforge.inspect.gradient_check import build_single_layer, check_gradients, run_forward

RNG = np.random.default_rng(8)


def _reference(student, teacher, t):
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        zs = [math.exp(v / t) for v in s_row]
        zt = [math.exp(v / t) for v in t_row]
        q = [v / sum(zs) for v in zs]
        p = [v / sum(zt) for v in zt]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return t * t * total / len(student)


def _layer(t):
    return (f'name: "l" type: "Distillation" bottom: "b0" bottom: "b1" top: "loss" '
            f"distillation_param {{ temperature: {t} }}")


@pytest.mark.parametrize("t", [1.0, 4.0, 20.0])
def test_loss_is_t_squared_kl_of_the_softened_distributions(t):
    student, teacher = RNG.standard_normal((5, 7)) * 3, RNG.standard_normal((5, 7)) * 3
    plan, step = build_single_layer(_layer(t), [student, teacher])
    run_forward(plan)
    assert float(step.tops[0].data) == pytest.approx(_reference(student, teacher, t), rel=1e-10)


def test_equal_logits_cost_nothing():
    x = RNG.standard_normal((3, 4))
    plan, step = build_single_layer(_layer(2), [x, x.copy()])
    run_forward(plan)
    assert abs(float(step.tops[0].data)) < 1e-12


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_gradient_reaches_the_student_only(t):
    student, teacher = RNG.standard_normal((4, 6)), RNG.standard_normal((4, 6))
    plan, step = build_single_layer(_layer(t), [student, teacher])
    assert not check_gradients(plan, step, check_bottoms=[0])
    # the closed form T·(q − p)/N, scaled by the loss weight seeded into the top's diff
    run_forward(plan)
    step.tops[0].diff[...] = 0.5
    step.layer.backward(step.tops, [True, False], step.bottoms)
    q = np.exp(student / t) / np.exp(student / t).sum(1, keepdims=True)
    p = np.exp(teacher / t) / np.exp(teacher / t).sum(1, keepdims=True)
    np.testing.assert_allclose(step.bottoms[0].diff, 0.5 * t * (q - p) / 4, rtol=1e-10)
    assert 1 in step.layer.no_gradient_bottoms


def test_bad_shapes_and_temperature_are_refused():
    with pytest.raises(ShapeError, match="must have the same shape"):
        build_single_layer(_layer(2), [np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        build_single_layer(_layer(0), [np.zeros((2, 3)), np.zeros((2, 3))])

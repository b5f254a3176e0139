"""The one central-difference checker (netforge.inspect.gradient_check) against closed forms,
and proof that each of its checks fails on a wrong gradient."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.inspect.gradient_check import (
    build_single_layer,
    check_gradients,
    directional_error,
    mismatched,
    numeric_gradient,
)


def test_numeric_gradient_matches_the_closed_form_and_restores_the_input():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    before = x.copy()
    grad = numeric_gradient(lambda: float(np.sum(np.sin(x) * w)), x)
    np.testing.assert_allclose(grad, np.cos(before) * w, rtol=0, atol=1e-8)
    assert np.array_equal(x, before)


def test_skipped_elements_are_nan_and_never_perturbed():
    x = np.arange(4.0)
    seen = []
    skip = np.array([False, True, False, True])
    grad = numeric_gradient(lambda: seen.append(x.copy()) or float(np.sum(x**2)), x, skip=skip)
    assert np.isnan(grad[[1, 3]]).all()
    np.testing.assert_allclose(grad[[0, 2]], [0.0, 4.0], atol=1e-6)
    assert all(np.array_equal(s[[1, 3]], [1.0, 3.0]) for s in seen)


def test_float32_inputs_are_refused():
    with pytest.raises(ValueError, match="float64"):
        numeric_gradient(lambda: 0.0, np.zeros(2, np.float32))


def test_mismatched_is_relative_above_one_and_absolute_below():
    analytic = np.array([1000.0, 1000.0, 0.1, 0.1, np.nan])
    numeric = np.array([1000.005, 1000.02, 0.100005, 0.10002, 1.0])
    assert mismatched(analytic, numeric, 1e-5).tolist() == [False, True, False, True, False]


def test_directional_error_accepts_the_gradient_and_rejects_a_wrong_one():
    rng = np.random.default_rng(1)
    x, d = rng.standard_normal(5), rng.standard_normal(5)

    def objective():
        return float(np.sum(np.exp(x)))

    right = float(np.exp(x) @ d)
    assert directional_error(objective, x, d, right)[0] < 1e-5
    assert directional_error(objective, x, d, right * 1.001)[0] > 1e-4


def test_directional_error_steps_over_a_kink_with_a_one_sided_difference():
    x, d = np.array([2e-8, 1.0]), np.array([1.0, 0.0])  # ReLU's kink within the step

    def objective():
        return float(np.sum(np.maximum(x, 0)))

    error, estimates = directional_error(objective, x, d, 1.0, step_size=1e-7)
    assert abs(estimates[0] - 1.0) > 0.1  # the central difference is bent by the kink
    assert error < 1e-5  # the one-sided one on the smooth side is exact


def test_check_gradients_passes_a_layer_and_flags_a_wrong_backward():
    x = np.random.default_rng(2).standard_normal((2, 3))
    text = 'name: "t" type: "TanH" bottom: "b0" top: "t"'
    plan, step = build_single_layer(text, [x])
    assert check_gradients(plan, step) == []

    plan, step = build_single_layer(text, [x])
    backward = step.layer.backward

    def wrong_backward(tops, propagate_down, bottoms):
        backward(tops, propagate_down, bottoms)
        bottoms[0].diff[0, 1] *= 1.01

    step.layer.backward = wrong_backward
    mismatches = check_gradients(plan, step)
    assert [(m.what, m.index) for m in mismatches] == [("bottom 0", (0, 1))]

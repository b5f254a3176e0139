"""The six update rules against an independent transcription of Caffe's formulas.

Each rule minimises a separable quadratic f(w) = ½ Σ a·(w − t)² for 50 steps with L2 or L1
decay, lr_mult/decay_mult and a learning rate that changes per step; the reference below is
written from the formulas in caffe-semantics.md §c, one line per formula, without sharing any
code with netforge.train.update_rules.
"""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.blob import Blob
from netforge.errors import ConfigError
from netforge.graph.plan import LearnableParam
from netforge.train.pruning import ParamMasks
from netforge.train.update_rules import make_update_rule

RNG = np.random.default_rng(4)
A = [RNG.uniform(0.5, 2.0, size=(3, 4)), RNG.uniform(0.5, 2.0, size=(4,))]
TARGET = [RNG.standard_normal((3, 4)), RNG.standard_normal((4,))]
START = [RNG.standard_normal((3, 4)), RNG.standard_normal((4,))]
MULTS = [(1.0, 1.0), (2.0, 0.0)]  # (lr_mult, decay_mult) per parameter, as weights and biases


def _grad(k, w):
    return A[k] * (w - TARGET[k])


def _rate(it):
    return 0.05 * 0.97**it


def _reference(kind, sp, steps=50, kept=None):
    """Caffe's rules written out directly: per parameter normalize, regularize, update.

    ``kept`` (one 0/1 array per parameter) prunes: the pruned weights start at 0 and their
    gradient is 0, so every formula leaves them (and their history) at 0.
    """
    kept = kept or [np.ones_like(s) for s in START]
    w = [s * m for s, m in zip(START, kept, strict=True)]
    h = [np.zeros_like(s) for s in START]
    h2 = [np.zeros_like(s) for s in START]
    for it in range(steps):
        for k in range(2):
            lr_mult, decay_mult = MULTS[k]
            g = _grad(k, w[k]) * kept[k]
            decay = sp.weight_decay * decay_mult
            g = g + decay * (w[k] if sp.regularization_type == "L2" else np.sign(w[k]))
            lr = _rate(it) * lr_mult
            if kind == "SGD":
                h[k] = sp.momentum * h[k] + lr * g
                step = h[k]
            elif kind == "Nesterov":
                previous = h[k]
                h[k] = sp.momentum * h[k] + lr * g
                step = (1 + sp.momentum) * h[k] - sp.momentum * previous
            elif kind == "AdaGrad":
                h[k] = h[k] + g * g
                step = lr * g / (np.sqrt(h[k]) + sp.delta)
            elif kind == "RMSProp":
                h[k] = sp.rms_decay * h[k] + (1 - sp.rms_decay) * g * g
                step = lr * g / (np.sqrt(h[k]) + sp.delta)
            elif kind == "AdaDelta":
                m = sp.momentum
                h[k] = m * h[k] + (1 - m) * g * g
                u = g * np.sqrt((h2[k] + sp.delta) / (h[k] + sp.delta))
                h2[k] = m * h2[k] + (1 - m) * u * u
                step = lr * u
            elif kind == "Adam":
                b1, b2, t = sp.momentum, sp.momentum2, it + 1
                h[k] = b1 * h[k] + (1 - b1) * g
                h2[k] = b2 * h2[k] + (1 - b2) * g * g
                step = lr * np.sqrt(1 - b2**t) / (1 - b1**t) * h[k] / (np.sqrt(h2[k]) + sp.delta)
            w[k] = w[k] - step
    return w


def _netforge(sp, steps=50, kept=None):
    params = []
    for k in range(2):
        blob = Blob(START[k].shape, np.float64)
        blob.data[...] = START[k]
        params.append(LearnableParam(blob, "layer", k, *MULTS[k]))
    rule = make_update_rule(sp, params)
    masks = ParamMasks(params)
    for k, m in enumerate(kept or []):
        masks.set(k, m)
    masks.apply(rule.history)
    for it in range(steps):
        for k, p in enumerate(params):
            p.blob.diff[...] = _grad(k, p.blob.data)
        masks.mask_gradients()  # as Solver.apply_update does around the rule
        rule.apply(_rate(it), it)
        masks.apply(rule.history)
    return [p.blob.data for p in params], rule


CASES = {
    "SGD": 'type: "SGD" momentum: 0.9',
    "Nesterov": 'type: "Nesterov" momentum: 0.9',
    "AdaGrad": 'type: "AdaGrad" delta: 1e-6',
    "RMSProp": 'type: "RMSProp" rms_decay: 0.95 delta: 1e-6',
    "AdaDelta": 'type: "AdaDelta" momentum: 0.95 delta: 1e-6',
    "Adam": 'type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 1e-8',
}


@pytest.mark.parametrize("regularization", ["L2", "L1"])
@pytest.mark.parametrize("kind", list(CASES))
def test_update_rule_matches_caffe_formulas_over_50_steps(kind, regularization):
    sp = config.parse_text(f'{CASES[kind]} weight_decay: 0.01 '
                           f'regularization_type: "{regularization}"', pb.SolverParameter())
    got, _ = _netforge(sp)
    want = _reference(kind, sp)
    for g, w, s in zip(got, want, START, strict=True):
        assert not np.allclose(w, s)  # the rule moved the parameters
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)


KEPT = [np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 1.0]]), np.array([0, 1, 1, 0.0])]


@pytest.mark.parametrize("regularization", ["L2", "L1"])
@pytest.mark.parametrize("kind", list(CASES))
def test_update_rule_with_pruning_mask_keeps_pruned_weights_and_history_at_zero(kind,
                                                                                regularization):
    sp = config.parse_text(f'{CASES[kind]} weight_decay: 0.01 '
                           f'regularization_type: "{regularization}"', pb.SolverParameter())
    got, rule = _netforge(sp, kept=KEPT)
    want = _reference(kind, sp, kept=KEPT)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        pruned = KEPT[k] == 0
        assert pruned.any() and (~pruned).any()
        assert np.all(g[pruned] == 0.0)  # exactly zero, not nearly
        for slot in rule.history:
            assert np.all(slot[k][pruned] == 0.0)
        assert not np.allclose(g[~pruned], START[k][~pruned])  # the kept weights trained
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)


def test_rules_converge_on_the_quadratic():
    """Every rule, with settings from Caffe's examples, ends nearer the minimum than it began."""
    for kind, text in CASES.items():
        sp = config.parse_text(text, pb.SolverParameter())
        before = np.abs(START[0] - TARGET[0]).sum()
        after = np.abs(_netforge(sp, steps=200)[0][0] - TARGET[0]).sum()
        assert after < before, kind


@pytest.mark.parametrize("text, expected", [("solver_type: ADAM", "Adam"),
                                             ("solver_type: NESTEROV", "Nesterov"),
                                             ('solver_type: ADAM type: "RMSProp"', "RMSProp")])
def test_deprecated_solver_type_enum_selects_the_rule(tmp_path, text, expected):
    path = tmp_path / "solver.prototxt"
    path.write_text(text)
    sp = config.load_solver_param(path)
    assert sp.type == expected
    assert type(make_update_rule(sp, [])).__name__ == expected


@pytest.mark.parametrize("kind", ["AdaGrad", "RMSProp"])
def test_rules_without_momentum_refuse_momentum(kind):
    sp = config.parse_text(f'type: "{kind}" momentum: 0.9', pb.SolverParameter())
    with pytest.raises(ConfigError, match="momentum"):
        _netforge(sp, steps=1)


def test_clip_scales_the_accumulated_gradient_before_normalising():
    """clip_gradients sees Σ over iter_size passes; the ÷ iter_size comes after."""
    sp = config.parse_text('type: "SGD" clip_gradients: 1.0 iter_size: 2', pb.SolverParameter())
    blob = Blob((4,), np.float64)
    blob.data[...] = 0.0
    blob.diff[...] = [3.0, 4.0, 0.0, 0.0]  # accumulated over 2 passes; norm 5
    rule = make_update_rule(sp, [LearnableParam(blob, "l", 0)])
    rule.apply(1.0, 0)
    # clipped to norm 1: (0.6, 0.8), then normalised by iter_size: (0.3, 0.4)
    np.testing.assert_allclose(blob.data, [-0.3, -0.4, 0.0, 0.0])


def test_clip_leaves_small_gradients_alone():
    sp = config.parse_text('type: "SGD" clip_gradients: 10.0', pb.SolverParameter())
    blob = Blob((2,), np.float64)
    blob.diff[...] = [3.0, 4.0]
    make_update_rule(sp, [LearnableParam(blob, "l", 0)]).apply(0.5, 0)
    np.testing.assert_allclose(blob.data, [-1.5, -2.0])


def test_sgd_walks_large_parameters_in_bounded_chunks_with_the_same_result(monkeypatch):
    from netforge.train import update_rules

    sp = config.parse_text('type: "SGD" momentum: 0.9 weight_decay: 0.01 clip_gradients: 2',
                           pb.SolverParameter())
    results = []
    for chunk in (1 << 18, 7):  # one piece, then pieces of 7 elements
        monkeypatch.setattr(update_rules, "CHUNK", chunk)
        blob = Blob((5, 9), np.float64)
        rng = np.random.default_rng(1)
        blob.data[...] = rng.standard_normal(blob.shape)
        rule = make_update_rule(sp, [LearnableParam(blob, "l", 0)])
        assert rule._chunk.size == min(chunk, 45)
        for _ in range(3):
            blob.diff[...] = rng.standard_normal(blob.shape)
            rule.apply(0.1, 0, verbose=False)
        results.append(blob.data.copy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-13)

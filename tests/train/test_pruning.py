"""Pruning masks: magnitude selection against naive loops, masks kept by the solver through
all six update rules, saved in snapshots, and a pruning run resumed bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, DataError
from netforge.train import pruning
from netforge.train.solver import Solver

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 }
                           data_filler { type: "gaussian" } data_filler { type: "uniform"
                           min: 0 max: 2.999 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

RULES = {
    "SGD": 'type: "SGD" momentum: 0.9',
    "Nesterov": 'type: "Nesterov" momentum: 0.9',
    "AdaGrad": 'type: "AdaGrad" delta: 1e-6',
    "RMSProp": 'type: "RMSProp" rms_decay: 0.95 delta: 1e-6',
    "AdaDelta": 'type: "AdaDelta" momentum: 0.95 delta: 1e-6',
    "Adam": 'type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 1e-8',
}


def _solver(tmp_path, rule: str = RULES["SGD"], extra: str = "") -> Solver:
    text = (f'base_lr: 0.05 weight_decay: 0.01 lr_policy: "fixed" max_iter: 20 '
            f'random_seed: 3 snapshot_prefix: "{tmp_path}/snap" {rule} {extra}')
    sp = config.parse_text(text, pb.SolverParameter())
    sp.train_net_param.CopyFrom(config.parse_text(NET, pb.NetParameter()))
    return Solver(sp, metrics=False)


def test_sparsity_prunes_exactly_the_smallest_magnitudes():
    values = np.random.default_rng(0).standard_normal((7, 9))
    kept = pruning.magnitude_kept(values, sparsity=0.6)
    n_pruned = round(0.6 * values.size)
    # naive: the n_pruned smallest |w|, one at a time
    remaining = list(range(values.size))
    flat = np.abs(values).ravel()
    pruned = set()
    for _ in range(n_pruned):
        smallest = min(remaining, key=lambda j: flat[j])
        remaining.remove(smallest)
        pruned.add(smallest)
    assert {j for j in range(values.size) if not kept.ravel()[j]} == pruned


def test_iterative_sparsity_prunes_on_top_of_the_existing_mask():
    values = np.random.default_rng(1).standard_normal(100)
    first = pruning.magnitude_kept(values, sparsity=0.3)
    values2 = values * first + np.random.default_rng(2).standard_normal(100) * 0.01 * first
    second = pruning.magnitude_kept(values2, sparsity=0.5, kept=first)
    assert second.sum() == 50 and np.all(second <= first)


def test_quality_threshold_is_q_times_the_std():
    values = np.random.default_rng(3).standard_normal(500)
    kept = pruning.magnitude_kept(values, quality=0.8)
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    assert [bool(k) for k in kept] == [abs(v) >= 0.8 * std for v in values]


def test_a_target_needs_exactly_one_of_sparsity_or_quality():
    with pytest.raises(ConfigError, match="either a sparsity or a quality"):
        pruning.magnitude_kept(np.ones(3), sparsity=0.5, quality=1.0)
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        pruning.magnitude_kept(np.ones(3), sparsity=1.0)


def test_unknown_layer_is_refused_naming_the_prunable_ones(tmp_path):
    solver = _solver(tmp_path)
    with pytest.raises(ConfigError, match="cannot prune relu: prunable layers are ip1, ip2"):
        pruning.prune(solver, {"relu": {"sparsity": 0.5}})


@pytest.mark.parametrize("kind", list(RULES))
def test_every_solver_keeps_pruned_weights_and_history_exactly_zero(tmp_path, kind):
    solver = _solver(tmp_path, RULES[kind], "clip_gradients: 5")
    counts = pruning.prune(solver, {"ip1": {"sparsity": 0.7}, "ip2": {"sparsity": 0.5}})
    assert counts == {"ip1": (18, 60), "ip2": (15, 30)}
    params = solver.net.learnable_params
    before = [p.blob.data.copy() for p in params]
    solver.step(15)
    for i in (0, 2):  # the weights of ip1 and ip2
        pruned = ~solver.masks.kept(i)
        assert np.all(params[i].blob.data[pruned] == 0.0)
        for slot in solver.rule.history:
            assert np.all(slot[i][pruned] == 0.0)
        kept = ~pruned
        assert np.all(params[i].blob.data[kept] != before[i][kept])  # the rest trained
    # biases are not pruned, and train
    assert np.any(params[1].blob.data != before[1])


def test_gradients_of_pruned_weights_do_not_count_for_clipping(tmp_path):
    """With clip_gradients, the norm is over the kept weights' gradients only."""
    solver = _solver(tmp_path, 'type: "SGD" momentum: 0', "clip_gradients: 0.01")
    pruning.prune(solver, {"ip1": {"sparsity": 0.9}})
    params = solver.net.learnable_params
    before = [p.blob.data.copy() for p in params]
    solver.net.clear_param_diffs()
    solver.net.forward_backward()
    kept = solver.masks.kept(0)
    grads = [p.blob.diff.copy() for p in params]
    grads[0] = grads[0] * kept
    norm = np.sqrt(sum(float((g * g).sum()) for g in grads))
    scale = min(1.0, 0.01 / norm)
    solver.apply_update()
    for p, g, b in zip(params, grads, before, strict=True):
        want = b - 0.05 * (g * scale + 0.01 * b)
        want = want * kept if p is params[0] else want
        np.testing.assert_allclose(p.blob.data, want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("fmt", ["", "snapshot_format: HDF5"])
@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_resume_of_a_pruning_run_is_bit_exact(tmp_path, kind, fmt):
    # two masks of different sizes (the HDF5 state once could not hold them in one array)
    targets = {"ip1": {"sparsity": 0.6}, "ip2": {"sparsity": 0.5}}
    straight = _solver(tmp_path, RULES[kind], fmt)
    pruning.prune(straight, targets)
    straight.step(10)

    first = _solver(tmp_path, RULES[kind], fmt)
    pruning.prune(first, targets)
    first.step(4)
    _, state = first.snapshot()
    resumed = _solver(tmp_path, RULES[kind], fmt)  # a fresh solver: no masks of its own
    resumed.restore(state)
    for i in (0, 2):
        np.testing.assert_array_equal(resumed.masks.kept(i), first.masks.kept(i))
    resumed.step(6)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params, strict=True):
        np.testing.assert_array_equal(a.blob.data, b.blob.data)
    for slot_a, slot_b in zip(straight.rule.history, resumed.rule.history, strict=True):
        for a, b in zip(slot_a, slot_b, strict=True):
            np.testing.assert_array_equal(a, b)


def test_damaged_mask_in_a_state_is_a_clear_error(tmp_path):
    solver = _solver(tmp_path)
    pruning.prune(solver, {"ip1": {"sparsity": 0.5}})
    _, state_path = solver.snapshot()
    state = config.read_binary(state_path, pb.SolverState())
    state.pruning_mask[0].kept_bits = b"\x01"
    state_path.write_bytes(state.SerializeToString())
    with pytest.raises(DataError, match="pruning mask 0 has shape"):
        _solver(tmp_path).restore(state_path)


def test_redense_drops_the_masks_and_the_weights_train_again(tmp_path):
    solver = _solver(tmp_path)
    pruning.prune(solver, {"ip1": {"sparsity": 0.5}})
    solver.step(3)
    pruned = ~solver.masks.kept(0)
    pruning.unprune(solver)
    solver.step(3)
    assert np.all(solver.net.learnable_params[0].blob.data[pruned] != 0.0)

"""Weight sharing: k-means against a naive Lloyd loop; centroid retraining by summed cluster
gradients against a hand computation; clusters stay shared under all six update rules; a
resumed retraining (index maps from the solverstate) bit for bit the straight one."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.deploy.compress.sharing import WeightSharing, linear_kmeans
from netforge.errors import DataError
from netforge.train import pruning
from netforge.train.solver import Solver

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 }
                           data_filler { type: "gaussian" } data_filler { type: "uniform"
                           min: 0 max: 2.999 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def _solver(tmp_path, rule: str) -> Solver:
    text = (f'base_lr: 0.01 lr_policy: "fixed" max_iter: 20 random_seed: 5 '
            f'snapshot_prefix: "{tmp_path}/snap" {rule}')
    sp = config.parse_text(text, pb.SolverParameter())
    sp.train_net_param.CopyFrom(config.parse_text(NET, pb.NetParameter()))
    return Solver(sp, metrics=False)


def _naive_kmeans(values, k, iterations=30):
    lo, hi = min(values), max(values)
    centroids = [lo + (hi - lo) * j / (k - 1) for j in range(k)]
    labels = None
    for _ in range(iterations):
        new = [min(range(k), key=lambda j: (abs(v - centroids[j]), j)) for v in values]
        if new == labels:
            break
        labels = new
        for j in range(k):
            members = [v for v, lab in zip(values, labels, strict=True) if lab == j]
            if members:
                centroids[j] = sum(members) / len(members)
    return centroids, labels


def test_linear_kmeans_matches_a_naive_lloyd_loop():
    values = np.random.default_rng(0).standard_normal(300) * 0.1
    codebook, labels = linear_kmeans(values, 8)
    want_codebook, want_labels = _naive_kmeans(values.tolist(), 8)
    assert labels.tolist() == want_labels
    np.testing.assert_allclose(codebook, want_codebook, rtol=1e-12)


def test_linear_initialisation_keeps_the_extremes():
    """A few large weights get their own centroid (the paper's reason for linear init)."""
    values = np.concatenate([np.random.default_rng(1).normal(0, 0.01, 1000), [1.0, -1.0]])
    codebook, labels = linear_kmeans(values, 4)
    assert codebook.min() == -1.0 and codebook.max() == 1.0
    assert (labels == labels[-1]).sum() == 1 and (labels == labels[-2]).sum() == 1


def test_centroids_move_by_the_summed_gradient_of_their_cluster(tmp_path):
    solver = _solver(tmp_path, 'type: "SGD" momentum: 0')
    pruning.prune(solver, {"ip1": {"sparsity": 0.5}})
    sharing = WeightSharing(solver)
    sharing.share(0, bits=2)
    codebook, labels = sharing.codebook(0)
    assert len(set(solver.net.learnable_params[0].blob.data[labels >= 0].tolist())) <= 4
    # the gradient of the shared weights, as the net computes it, summed by hand per cluster
    solver.net.clear_param_diffs()
    solver.net.forward_backward()
    grad = solver.net.learnable_params[0].blob.diff.astype(np.float64)
    want = [codebook[k] - 0.01 * grad[labels == k].sum() for k in range(4)]
    # the update (the solver sums each cluster's gradients first) on the gradient computed
    # above (a solver step would draw a new DummyData batch)
    solver.apply_update()
    after, _ = sharing.codebook(0)
    np.testing.assert_allclose(after, want, rtol=1e-5, atol=1e-7)
    data = solver.net.learnable_params[0].blob.data
    for k in range(4):
        assert np.all(data[labels == k] == after[k])  # still one value per cluster
    assert np.all(data[labels < 0] == 0.0)


ALL_RULES = ['type: "SGD" momentum: 0.9 weight_decay: 0.01',
             'type: "Nesterov" momentum: 0.9 weight_decay: 0.01',
             'type: "AdaGrad" delta: 1e-6 weight_decay: 0.01',
             'type: "RMSProp" rms_decay: 0.9 delta: 1e-6',
             'type: "AdaDelta" momentum: 0.95 delta: 1e-6',
             'type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 1e-8']


@pytest.mark.parametrize("rule", ALL_RULES)
def test_clusters_stay_shared_while_retraining(tmp_path, rule):
    solver = _solver(tmp_path, rule)
    sharing = WeightSharing(solver)
    sharing.share(0, bits=3)
    before, labels = sharing.codebook(0)
    solver.step(5)
    data = solver.net.learnable_params[0].blob.data
    assert len(np.unique(data)) <= 8
    after, _ = sharing.codebook(0)
    for k in np.unique(labels):
        assert np.all(data[labels == k] == after[k])
    assert not np.allclose(after, before)  # the centroids trained


@pytest.mark.parametrize("fmt", ["", "snapshot_format: HDF5"])
@pytest.mark.parametrize("rule", ['type: "SGD" momentum: 0.9 weight_decay: 0.01',
                                  'type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 1e-8'])
def test_resume_of_a_weight_sharing_run_is_bit_exact(tmp_path, rule, fmt):
    def shared(steps):
        solver = _solver(tmp_path, f"{rule} {fmt}")
        pruning.prune(solver, {"ip1": {"sparsity": 0.5}})
        sharing = WeightSharing(solver)
        sharing.share(0, bits=3)
        sharing.share(2, bits=2)
        solver.step(steps)
        return solver

    straight = shared(10)
    first = shared(4)
    _, state = first.snapshot()
    resumed = _solver(tmp_path, f"{rule} {fmt}")  # a fresh solver: no masks, no clusters
    resumed.restore(state)
    for i in (0, 2):
        np.testing.assert_array_equal(resumed.clusters.index_map(i), first.clusters.index_map(i))
    assert resumed.clusters.bits == {0: 3, 2: 2}
    resumed.step(6)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params, strict=True):
        np.testing.assert_array_equal(a.blob.data, b.blob.data)
    for slot_a, slot_b in zip(straight.rule.history, resumed.rule.history, strict=True):
        for a, b in zip(slot_a, slot_b, strict=True):
            np.testing.assert_array_equal(a, b)
    # and still one value per cluster, at most 2^bits of them, after the resume
    data = resumed.net.learnable_params[0].blob.data
    labels = resumed.clusters.index_map(0)
    for k in np.unique(labels[labels >= 0]):
        assert len(np.unique(data[labels == k])) == 1
    assert np.all(data[labels < 0] == 0.0)


def test_resume_without_the_index_maps_would_drift(tmp_path):
    """The check above can fail: a solver that resumes the weights and history but not the
    clusters lets each weight of a cluster follow its own gradient."""
    solver = _solver(tmp_path, 'type: "SGD" momentum: 0.9')
    WeightSharing(solver).share(0, bits=2)
    solver.step(2)
    _, state = solver.snapshot()
    resumed = _solver(tmp_path, 'type: "SGD" momentum: 0.9')
    resumed.restore(state)
    resumed.clusters = None
    resumed.step(3)
    assert len(np.unique(resumed.net.learnable_params[0].blob.data)) > 4


def test_a_damaged_index_map_in_the_state_is_one_clear_error(tmp_path):
    solver = _solver(tmp_path, 'type: "SGD" momentum: 0.9')
    WeightSharing(solver).share(0, bits=2)
    solver.step(1)
    _, state = solver.snapshot()
    message = pb.SolverState.FromString(state.read_bytes())
    message.weight_sharing[0].index_map[0] = 7  # outside 0..3
    state.write_bytes(message.SerializeToString())
    with pytest.raises(DataError, match="weight-sharing index map 0 is damaged"):
        _solver(tmp_path, 'type: "SGD" momentum: 0.9').restore(state)

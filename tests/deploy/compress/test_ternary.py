"""Trained ternary quantization: one retraining step against the paper's gradients computed by
hand (scales by the mean gradient of their side), and the weights left ternary at the end."""

from __future__ import annotations

import numpy as np

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.deploy.compress.ternary import TernaryTraining
from netforge.train.solver import Solver

# constant inputs: every forward sees the same batch, so a gradient computed by hand
# beforehand is the one the solver's step sees
NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 }
                           data_filler { type: "constant" value: 0.7 }
                           data_filler { type: "constant" value: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def _solver(tmp_path) -> Solver:
    text = (f'base_lr: 0.1 lr_policy: "fixed" max_iter: 10 random_seed: 2 momentum: 0 '
            f'type: "SGD" snapshot_prefix: "{tmp_path}/s"')
    sp = config.parse_text(text, pb.SolverParameter())
    sp.train_net_param.CopyFrom(config.parse_text(NET, pb.NetParameter()))
    return Solver(sp, metrics=False)


def test_one_step_follows_the_ttq_gradients(tmp_path):
    solver = _solver(tmp_path)
    blob = solver.net.learnable_params[0].blob
    w = blob.data.astype(np.float64).copy()
    delta = 0.1 * np.abs(w).max()
    pos, neg = w > delta, w < -delta
    wp, wn = w[pos].mean(), -w[neg].mean()
    ternary = np.where(pos, wp, np.where(neg, -wn, 0.0))
    # the gradient at the ternary weights, by the net itself
    blob.data[...] = ternary
    solver.net.clear_param_diffs()
    solver.net.forward_backward()
    g = blob.diff.astype(np.float64).copy()
    blob.data[...] = w

    training = TernaryTraining(solver, threshold=0.1)
    training.add(0)
    np.testing.assert_allclose(training.scales[0], [wp, wn], rtol=1e-6)
    training.install()
    solver.step(1)
    want_latent = w - 0.1 * np.where(pos, wp, np.where(neg, wn, 1.0)) * g
    np.testing.assert_allclose(blob.data, want_latent, rtol=1e-5, atol=1e-7)
    # the scales step by the mean gradient of their side (see ternary.py)
    np.testing.assert_allclose(training.scales[0], [wp - 0.1 * g[pos].sum() / pos.sum(),
                                                    wn + 0.1 * g[neg].sum() / neg.sum()],
                               rtol=1e-5)


def test_finish_leaves_three_values_and_their_index_map(tmp_path):
    solver = _solver(tmp_path)
    training = TernaryTraining(solver)
    training.add(0)
    training.install()
    solver.step(3)
    maps = training.finish()
    w = solver.net.learnable_params[0].blob.data
    wp, wn = training.scales[0]
    np.testing.assert_array_equal(w, np.where(maps[0] == 1, np.float32(wp),
                                              np.where(maps[0] == 0, np.float32(-wn), 0)))
    assert set(np.unique(maps[0]).tolist()) <= {-1, 0, 1}
    assert not solver.callbacks  # the hooks are gone

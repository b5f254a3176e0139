"""Solver: Caffe's SGD rule, weight decay, iteration loop, snapshots and exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.train.solver import Solver
from netforge.weights import read_caffemodel

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 }
                           data_filler { type: "gaussian" } data_filler { type: "uniform"
                           min: 0 max: 2.999 } } }  # labels truncate to 0..2
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def _solver(tmp_path, extra: str = "", net: str = NET, momentum: float = 0.9) -> Solver:
    text = (f'base_lr: 0.1 momentum: {momentum} weight_decay: 0.01 lr_policy: "step" gamma: 0.5 '
            f'stepsize: 3 max_iter: 10 random_seed: 7 snapshot_prefix: "{tmp_path}/snap" '
            + extra)
    sp = config.parse_text(text, pb.SolverParameter())
    sp.train_net_param.CopyFrom(config.parse_text(net, pb.NetParameter()))
    return Solver(sp)


def test_sgd_matches_caffe_rule_with_momentum_and_decay(tmp_path):
    solver = _solver(tmp_path, "regularization_type: 'L2'")
    params = solver.net.learnable_params
    history = [np.zeros_like(p.blob.data) for p in params]
    for it in range(4):
        before = [p.blob.data.copy() for p in params]
        solver.net.clear_param_diffs()
        solver.net.forward_backward()
        grads = [p.blob.diff.copy() for p in params]
        rate = 0.1 * 0.5 ** (it // 3)
        solver.apply_update()
        solver.iter += 1
        for k, p in enumerate(params):
            g = grads[k] + 0.01 * p.decay_mult * before[k]
            history[k] = 0.9 * history[k] + rate * p.lr_mult * g
            np.testing.assert_allclose(p.blob.data, before[k] - history[k], rtol=1e-5,
                                       atol=1e-7)


def test_l1_regularization(tmp_path):
    solver = _solver(tmp_path, "regularization_type: 'L1'", momentum=0.0)
    p = solver.net.learnable_params[0]
    before = p.blob.data.copy()
    solver.net.clear_param_diffs()
    solver.net.forward_backward()
    g = p.blob.diff.copy()
    solver.apply_update()
    np.testing.assert_allclose(p.blob.data, before - 0.1 * (g + 0.01 * np.sign(before)),
                               rtol=1e-5, atol=1e-7)


def test_snapshot_files_are_caffe_shaped(tmp_path):
    solver = _solver(tmp_path)
    solver.step(2)
    model, state = solver.snapshot()
    assert model.name == "snap_iter_2.caffemodel" and state.name == "snap_iter_2.solverstate"
    net = read_caffemodel(model)
    shapes = {layer.name: [tuple(b.shape.dim) for b in layer.blobs] for layer in net.layer}
    assert shapes["ip1"] == [(5, 6), (5,)]
    assert shapes["ip2"] == [(3, 5), (3,)]
    assert [layer.type for layer in net.layer][:2] == ["DummyData", "InnerProduct"]
    saved = config.read_binary(state, pb.SolverState())
    assert saved.iter == 2 and saved.learned_net == str(model) and len(saved.history) == 4
    assert not list(tmp_path.glob(".*tmp*"))  # no temporaries left behind


def test_resume_is_bit_exact(tmp_path):
    straight = _solver(tmp_path)
    straight.step(10)
    first = _solver(tmp_path)
    first.step(5)
    _, state = first.snapshot()
    resumed = _solver(tmp_path)
    resumed.restore(state)
    assert resumed.iter == 5
    resumed.step(5)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params, strict=True):
        np.testing.assert_array_equal(a.blob.data, b.blob.data)


def test_resume_from_hdf5_snapshot(tmp_path):
    first = _solver(tmp_path, "snapshot_format: HDF5")
    first.step(3)
    model, state = first.snapshot()
    assert model.name.endswith(".caffemodel.h5") and state.name.endswith(".solverstate.h5")
    resumed = _solver(tmp_path, "snapshot_format: HDF5")
    resumed.restore(state)
    for a, b in zip(first.net.learnable_params, resumed.net.learnable_params, strict=True):
        np.testing.assert_array_equal(a.blob.data, b.blob.data)


def test_finetune_copies_by_layer_name_and_reports_shape_mismatch(tmp_path):
    source = _solver(tmp_path)
    source.step(1)
    model, _ = source.snapshot()
    renamed = NET.replace('name: "ip2"', 'name: "ip2_new"')
    target = _solver(tmp_path, net=renamed)
    target.net.copy_from(model)
    np.testing.assert_array_equal(target.net.params["ip1"][0].data,
                                  source.net.params["ip1"][0].data)
    assert not np.array_equal(target.net.params["ip2_new"][0].data,
                              source.net.params["ip2"][0].data)
    wider = _solver(tmp_path, net=NET.replace("num_output: 5", "num_output: 4"))
    from netforge.errors import ShapeError

    with pytest.raises(ShapeError, match=r'layer "ip1".*\(5, 6\).*\(4, 6\)'):
        wider.net.copy_from(model)


def test_solve_snapshots_after_training_and_tests(tmp_path, caplog):
    solver = _solver(tmp_path, "display: 5 snapshot: 4")
    solver.solve()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "snap_iter_4.caffemodel" in names and "snap_iter_8.caffemodel" in names
    assert "snap_iter_10.caffemodel" in names and "snap_iter_10.solverstate" in names
    assert solver.iter == 10

"""Mixed precision's pure-Python parts on numpy: precision fields, the loss-scale state
machine against an independent scalar reference, and fp32 master weights (fp16 params)."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.blob import Blob
from netforge.errors import ConfigError
from netforge.graph.compile import LearnableParam
from netforge.train import mixed_precision as mp
from netforge.train.update_rules import make_update_rule

NET = """
name: "n"
precision { compute: BFLOAT16 tf32: true }
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
layer { name: "ip16" type: "InnerProduct" bottom: "y" top: "z"
        precision { compute: FLOAT16 } inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "x" top: "l" }
"""


def _net(text=NET):
    param = pb.NetParameter()
    config.parse_text(text, param, "net.prototxt")
    return param


def test_precision_fields_parse_and_resolve_with_fp32_kept_for_losses():
    got = mp.resolve_precisions(_net())
    assert got["ip"] == mp.LayerPrecision("BFLOAT16", True)
    assert got["ip16"] == mp.LayerPrecision("FLOAT16", True)  # tf32 inherited from the net
    assert got["loss"] == mp.LayerPrecision("FLOAT32", True, forced_fp32=True)
    assert got["data"].compute == "FLOAT32" and got["data"].forced_fp32


def test_net_without_precision_is_fp32_and_a_differing_layer_is_refused():
    plain = _net(NET.replace("precision { compute: BFLOAT16 tf32: true }", ""))
    assert mp.net_precision(plain) == mp.LayerPrecision("FLOAT32", False)
    with pytest.raises(ConfigError, match='layer "ip16": precision FLOAT16 differs'):
        mp.check_single_precision(_net())


def test_solver_fields_round_trip_text_format():
    sp = pb.SolverParameter()
    config.parse_text("cuda_graph: false loss_scale { init_scale: 1024 growth_interval: 3 }",
                      sp, "solver.prototxt")
    assert sp.cuda_graph is False and sp.loss_scale.init_scale == 1024
    assert pb.SolverParameter().cuda_graph is True  # capture is on by default
    assert mp.scaling_param(pb.SolverParameter(), "FLOAT16")[0] is True
    assert mp.scaling_param(pb.SolverParameter(), "BFLOAT16")[0] is False
    assert mp.scaling_param(sp, "BFLOAT16") == (True, sp.loss_scale)


def test_compute_dtypes():
    assert mp.compute_dtype("FLOAT16") == np.float16
    assert mp.compute_dtype("BFLOAT16").name == "bfloat16"
    with pytest.raises(ConfigError, match="unknown precision"):
        mp.compute_dtype("INT8")


def _reference_scaler(overflows, init, growth, backoff, interval, cap):
    """PyTorch GradScaler's rules, one Python float at a time."""
    scale, good, out = init, 0, []
    for bad in overflows:
        if bad:
            scale, good = scale * backoff, 0
        elif good + 1 >= interval:
            scale, good = min(scale * growth, cap), 0
        else:
            good += 1
        out.append((scale, good))
    return out


def test_loss_scaler_state_machine_matches_the_reference():
    rng = np.random.default_rng(3)
    overflows = list(rng.random(60) < 0.2)
    param = pb.LossScaleParameter(init_scale=8.0, growth_factor=2.0, backoff_factor=0.5,
                                  growth_interval=3, max_scale=64.0)
    scaler = mp.LossScaler(param)
    grads = [np.ones(4, np.float16), np.full(4, np.inf, np.float16)]
    master = np.empty(4, np.float32)
    seen = []
    for bad in overflows:
        scaler.begin_step()
        scaler.unscale(grads[int(bad)], master)
        scaler.update()
        scale, good, found = scaler.host_state()
        assert found == bad
        seen.append((scale, good))
    assert seen == _reference_scaler(overflows, 8.0, 2.0, 0.5, 3, 64.0)


def test_unscale_divides_in_fp32_and_flags_nan():
    scaler = mp.LossScaler(pb.LossScaleParameter(init_scale=1024.0))
    grad = np.array([1024.0, -2048.0, 512.0], np.float16)
    master = np.empty(3, np.float32)
    scaler.begin_step()
    scaler.unscale(grad, master)
    np.testing.assert_array_equal(master, [1.0, -2.0, 0.5])
    assert scaler.host_state()[2] is False
    scaler.unscale(np.array([np.nan, 0, 0], np.float16), master)
    assert scaler.host_state()[2] is True


def test_bad_scaler_settings_are_refused():
    with pytest.raises(ConfigError, match="growth_factor"):
        mp.LossScaler(pb.LossScaleParameter(growth_factor=1.0))


def _params(values):
    params = []
    for i, v in enumerate(values):
        blob = Blob(np.shape(v), np.float16)
        blob.data[...] = v
        params.append(LearnableParam(blob, "ip", i))
    return params


def test_master_weights_update_in_fp32_and_skip_an_overflowing_step():
    sp = pb.SolverParameter(type="SGD", base_lr=0.1, momentum=0.9, weight_decay=0.0)
    w0 = np.array([[0.5, -0.25], [1.0, 2.0]])
    params = _params([w0])
    scaler = mp.LossScaler(pb.LossScaleParameter(init_scale=256.0, growth_interval=1000))
    weights = mp.MasterWeights(sp, params, scaler, make_update_rule)
    g = np.array([[0.01, 0.02], [-0.03, 0.04]])
    # step 1: clean -> SGD on fp32 masters with the unscaled gradient
    scaler.begin_step()
    params[0].blob.diff[...] = g * 256.0
    weights.apply(0.1, 0)
    expected = w0.astype(np.float32) - np.float32(0.1) * (g * 256.0).astype(np.float16).astype(
        np.float32) / np.float32(256.0)
    np.testing.assert_allclose(weights.masters[0].blob.data, expected, rtol=1e-6)
    np.testing.assert_array_equal(params[0].blob.data, expected.astype(np.float16))
    history = weights.rule.history[0][0].copy()
    # step 2: an Inf in the gradient -> weights and momentum untouched, scale halved
    scaler.begin_step()
    params[0].blob.diff[...] = np.inf
    weights.apply(0.1, 1)
    np.testing.assert_array_equal(weights.masters[0].blob.data, expected)
    np.testing.assert_array_equal(weights.rule.history[0][0], history)
    assert scaler.host_state()[0] == 128.0

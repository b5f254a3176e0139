"""Low-rank factorisation: the rank from the energy fraction against a hand computation, the
factorised net computing the original one at full rank (Convolution and InnerProduct), and the
truncation error equal to the dropped singular values (Eckart–Young)."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.deploy.compress import lowrank
from netforge.errors import ConfigError
from netforge.net import Net

NET = """
name: "small"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 7 dim: 7 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.2 }
                              bias_filler { type: "gaussian" std: 0.1 } } }
"""


def test_energy_rank_is_the_smallest_rank_holding_the_fraction():
    s = [3.0, 2.0, 1.0, 0.5]  # s² = 9, 4, 1, 0.25; total 14.25
    assert lowrank.energy_rank(s, 9 / 14.25) == 1
    assert lowrank.energy_rank(s, 9.5 / 14.25) == 2
    assert lowrank.energy_rank(s, 13 / 14.25) == 2
    assert lowrank.energy_rank(s, 13.5 / 14.25) == 3
    assert lowrank.energy_rank(s, 1.0) == 4
    with pytest.raises(ConfigError, match="energy must be in"):
        lowrank.energy_rank(s, 0.0)


def _factorised(net, param, targets):
    factors = {name: lowrank.factorize_layer(net.layer_dict[name], **kw)
               for name, kw in targets.items()}
    new = Net(lowrank.factorized_net_param(param, factors), "test")
    for layer in new.layers:
        old = net.layer_dict.get(layer.name)
        if old is not None and layer.blobs:
            for b, o in zip(layer.blobs, old.blobs, strict=True):
                b.data[...] = o.data
    lowrank.load_factor_blobs(new, lowrank.factor_blobs(factors))
    return new, factors


def test_full_rank_factorisation_computes_the_same_net():
    param = config.parse_text(NET, pb.NetParameter())
    net = Net(param, "test", seed=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7)).astype(np.float32)
    want = net.forward(data=x)["ip"].copy()
    new, factors = _factorised(net, param, {"conv": {"energy": 1.0}, "ip": {"energy": 1.0}})
    assert factors["conv"].rank == 6 and factors["ip"].rank == 5
    assert [layer.name for layer in new.layers] == [
        "data", "conv_lowrank", "conv_uv", "relu", "ip_lowrank", "ip_uv"]
    assert new.params["conv_uv"][0].shape == (6, 6, 1, 1)
    np.testing.assert_allclose(new.forward(data=x)["ip"], want, rtol=1e-4, atol=1e-5)


def test_truncation_drops_exactly_the_smallest_singular_values():
    param = config.parse_text(NET, pb.NetParameter())
    net = Net(param, "test", seed=2)
    w = net.params["ip"][0].data.astype(np.float64)
    factor = lowrank.factorize_layer(net.layer_dict["ip"], rank=2)
    approx = factor.second.astype(np.float64) @ factor.first.astype(np.float64)
    s = np.linalg.svd(w, compute_uv=False)
    assert np.linalg.norm(w - approx) == pytest.approx(np.sqrt((s[2:] ** 2).sum()), rel=1e-5)
    assert factor.params_after == 2 * (w.shape[0] + w.shape[1]) + 5


def test_other_layer_types_are_refused():
    param = config.parse_text(NET, pb.NetParameter())
    net = Net(param, "test")
    with pytest.raises(ConfigError, match='layer "relu" is a ReLU'):
        lowrank.factorize_layer(net.layer_dict["relu"], energy=0.9)

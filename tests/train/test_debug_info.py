"""``debug_info: true``: Caffe's [Forward]/[Backward]/[Update] magnitude lines, on display
iterations, with values checked against the blobs themselves."""

from __future__ import annotations

import logging
import re

import numpy as np

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.train.solver import Solver

NET = """name: "d"
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
                           data_filler { type: "gaussian" } data_filler { type: "constant" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "s"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" }
                              bias_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }
"""


def _solver(debug: bool, display: int = 1):
    param = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=3, display=display,
                               debug_info=debug, random_seed=1)
    param.train_net_param.CopyFrom(config.parse_text(NET, pb.NetParameter()))
    return Solver(param, metrics=False)


def _values(records, pattern):
    out = []
    for record in records:
        match = re.fullmatch(pattern, record.getMessage())
        if match:
            out.append(match.groups())
    return out


def test_debug_info_lines_match_the_blobs(caplog):
    solver = _solver(True)
    net = solver.net
    w0, b0 = (blob.data.copy() for blob in net.params["ip"])  # the forward's weights
    with caplog.at_level(logging.INFO, logger="netforge"):
        solver.step(1)
    records = caplog.records
    mean = lambda a: float(np.abs(a).mean())  # noqa: E731
    tops = dict(_values(records, r"    \[Forward\] Layer \w+, top blob (\w+) data: (\S+)"))
    assert set(tops) == {"x", "y", "s", "loss"}
    for name in ("x", "loss"):
        np.testing.assert_allclose(float(tops[name]), mean(net.blobs[name].data), rtol=1e-5)
    # "s" is an intermediate activation of the train net: its memory holds later values
    # after the step (graph/train_memory.py), so it is recomputed from x and the weights.
    s = net.blobs["x"].data.astype(np.float64) @ w0.T.astype(np.float64) + b0
    np.testing.assert_allclose(float(tops["s"]), mean(s), rtol=1e-5)
    back = dict(_values(records, r"    \[Backward\] Layer (\w+), bottom blob (\w+) diff: \S+"))
    assert back == {"loss": "s"}  # the data layer's tops need no gradient, as in Caffe
    updates = _values(records, r"    \[Update\] Layer ip, param (\d) data: (\S+); diff: (\S+)")
    assert [k for k, _, _ in updates] == ["0", "1"]
    weight, bias = net.params["ip"]
    for (_, data, diff), blob in zip(updates, (weight, bias), strict=True):
        np.testing.assert_allclose(float(data), mean(blob.data), rtol=1e-5)
        np.testing.assert_allclose(float(diff), mean(blob.diff), rtol=1e-5)
    forward_params = _values(records, r"    \[Forward\] Layer ip, param blob (\d) data: (\S+)")
    assert float(forward_params[1][1]) == 0.5  # the bias before its first update


def test_debug_info_only_on_display_iterations_and_only_when_asked(caplog):
    with caplog.at_level(logging.INFO, logger="netforge"):
        _solver(True, display=2).step(3)  # iterations 0 and 2 display
        forward = [r for r in caplog.records if "[Forward] Layer ip, top blob" in r.getMessage()]
        assert len(forward) == 2
        caplog.clear()
        _solver(False).step(2)
    assert not [r for r in caplog.records if "[Forward]" in r.getMessage()]

"""`netforge time` (Caffe's per-layer benchmark), `netforge test` (Caffe's lines), and
`netforge draw` (.dot written by netforge; rendering needs Graphviz's dot)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netforge import netforge_pb2 as pb
from netforge.config import parse_text
from netforge.inspect import draw
from netforge.inspect.timing import format_table, time_net
from netforge.net import Net

ROOT = Path(__file__).resolve().parents[2]

# Constant data through an InnerProduct into a Euclidean loss: every number is known.
# ip = 3 inputs of 1 times weights 0.5 = 1.5; loss = sum((1.5 - 1)^2) / (2 * N=2) = 0.125.
LOSS_NET = """
name: "constant"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 }
                     data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  include { phase: TEST }
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  include { phase: TRAIN }
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def run(*args, path=None):
    env = dict(os.environ, NETFORGE_DEBUG="0")
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "netforge", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


@pytest.fixture()
def loss_net(tmp_path):
    path = tmp_path / "loss.prototxt"
    path.write_text(LOSS_NET)
    return path


def test_time_reports_every_layer_and_caffes_lines(loss_net, caplog):
    net = Net(loss_net, "train")
    with caplog.at_level(logging.INFO, logger="netforge"):
        report = time_net(net, iterations=2)
    assert [layer.name for layer in report.layers] == ["data", "ip", "relu", "loss"]
    assert all(layer.forward_ms >= 0 and layer.backward_ms >= 0 for layer in report.layers)
    assert report.total_ms >= report.forward_ms + report.backward_ms
    text = caplog.text
    for line in ("Initial loss: 0.125", "*** Benchmark begins ***", "Testing for 2 iterations.",
                 "Iteration: 2 forward-backward time:", "Average Forward pass:",
                 "Average Backward pass:", "Average Forward-Backward:", "Total Time:",
                 "*** Benchmark ends ***"):
        assert line in text
    assert re.search(r"\s+ip\tforward: [\d.e-]+ ms\.", text)
    assert re.search(r"\s+loss\tbackward: [\d.e-]+ ms\.", text)
    table = format_table(report).splitlines()
    assert table[0].split() == ["layer", "type", "forward", "ms", "backward", "ms", "share"]
    rows = table[2:6]
    assert [row.split()[:2] for row in rows] == [["data", "DummyData"], ["ip", "InnerProduct"],
                                                 ["relu", "ReLU"], ["loss", "EuclideanLoss"]]
    assert sum(float(row.split()[-1].rstrip("%")) for row in rows) == pytest.approx(100, abs=1)
    assert table[7].startswith("(average pass)") and "per iteration" in table[8]


def test_time_and_test_commands(loss_net):
    result = run("time", "--model", str(loss_net), "--iterations", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[:2] == ["layer", "type"]
    weights = loss_net.with_suffix(".caffemodel")
    Net(loss_net, "test").save(weights)
    result = run("-v", "test", "--model", str(loss_net), "--weights", str(weights),
                 "--iterations", "2")  # -v: `test` is quiet by default, its result on stdout
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loss = 0.125"
    log = result.stderr
    assert "Running for 2 iterations." in log
    assert "Batch 0, loss = 0.125" in log and "Batch 1, loss = 0.125" in log
    assert "Loss: 0.125" in log and "loss = 0.125 (* 1 = 0.125 loss)" in log


def test_dot_has_layers_blobs_and_in_place_versions(loss_net):
    param = parse_text(loss_net.read_text(), pb.NetParameter())
    text = draw.net_to_dot(param, rankdir="TB", phase="TEST")
    assert text.startswith('digraph "constant" {') and "rankdir=TB;" in text
    assert text.count('\\n(InnerProduct)\\n') == 1  # the TRAIN copy of "ip" is filtered out
    assert '"layer:1:ip" [label="ip\\n(InnerProduct)\\n1 out"' in text
    # relu writes "ip" in place: a second version of the blob, so no cycle.
    assert '"blob:ip#0" -> "layer:2:relu";' in text
    assert '"layer:2:relu" -> "blob:ip#1";' in text
    assert '"blob:ip#1" -> "layer:3:loss";' in text
    assert '"blob:label#0" -> "layer:3:loss";' in text
    everything = draw.net_to_dot(param)  # ALL phases: both "ip" layers
    assert everything.count('\\n(InnerProduct)\\n') == 2


def test_draw_writes_dot_and_explains_a_missing_graphviz(loss_net, tmp_path, monkeypatch):
    out = tmp_path / "net.dot"
    result = run("draw", str(loss_net), str(out), "--phase", "TEST")
    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith("digraph")
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    with pytest.raises(draw.GraphvizMissingError, match="install Graphviz .*apt-get install"):
        draw.draw_net_to_file(loss_net, tmp_path / "net.svg")
    assert not (tmp_path / "net.svg").exists()
    empty = tmp_path / "no-bin"
    empty.mkdir()
    result = run("draw", str(loss_net), str(tmp_path / "net.png"), path=str(empty))
    assert result.returncode == 2
    assert "Graphviz" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draw_renders_svg_with_graphviz(loss_net, tmp_path):
    out = draw.draw_net_to_file(loss_net, tmp_path / "net.svg")
    assert "<svg" in out.read_text()

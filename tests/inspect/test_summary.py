"""``netforge summary``: per-layer shapes, parameter counts and FLOPs, and their totals."""

import logging
from pathlib import Path

import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.cli.main import main
from netforge.inspect import summary
from netforge.net import Net

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "configs" / "lenet.prototxt"


def _rows(path=LENET, batch=None):
    return {row.name: row for row in summary.summary_of_file(path, batch=batch)[1]}


def test_lenet_parameter_counts():
    rows = _rows()
    # weights + biases: 20·1·5·5+20, 50·20·5·5+50, 500·800+500, 10·500+10
    assert {name: rows[name].params for name in ("conv1", "conv2", "ip1", "ip2")} == {
        "conv1": 520, "conv2": 25_050, "ip1": 400_500, "ip2": 5_010}
    assert sum(row.params for row in rows.values()) == 431_080


def test_lenet_shapes_and_flops_follow_the_stated_formulas():
    rows = _rows(batch=2)
    assert rows["conv1"].top_shapes == [(2, 20, 24, 24)]
    assert rows["ip1"].top_shapes == [(2, 500)]
    batch = 2
    macs_conv1 = batch * 20 * 24 * 24 * (1 * 5 * 5)
    macs_conv2 = batch * 50 * 8 * 8 * (20 * 5 * 5)
    assert rows["conv1"].flops == 2 * macs_conv1
    assert rows["conv2"].flops == 2 * macs_conv2
    assert rows["ip1"].flops == 2 * (batch * 500 * 800)
    assert rows["pool1"].flops == batch * 20 * 12 * 12 * (2 * 2)  # one op per window element
    assert rows["relu1"].flops == batch * 500
    assert rows["data"].flops == 0


def test_auto_inserted_splits_are_not_rows_and_shared_params_count_once():
    net = Net(config.parse_text("""
      layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
      layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
              inner_product_param { num_output: 4 bias_term: false } }
      layer { name: "b" type: "InnerProduct" bottom: "data" top: "b" param { name: "w" }
              inner_product_param { num_output: 4 bias_term: false } }
    """, pb.NetParameter()), "test")
    rows = summary.summarize(net)
    assert [row.name for row in rows] == ["data", "a", "b"]
    assert [row.params for row in rows] == [0, 16, 0]


def test_unknown_cost_is_shown_as_a_dash_and_named():
    rows = [summary.LayerSummary("x", "Mystery", [(1, 2)], 0, None),
            summary.LayerSummary("y", "ReLU", [(1, 2)], 0, 2)]
    text = summary.format_table(rows)
    assert "FLOPs not estimated for: x" in text
    assert "Total FLOPs:  2 " in text


def test_squeezenet_totals():
    rows = _rows(ROOT / "configs" / "zoo" / "squeezenet1.1_deploy.prototxt", batch=1)
    assert sum(row.params for row in rows.values()) == 1_235_496  # SqueezeNet v1.1's count
    assert rows["conv10"].flops == 2 * 1000 * 14 * 14 * 512
    assert rows["pool10"].top_shapes == [(1, 1000, 1, 1)]


@pytest.fixture
def restore_logging():
    """The CLI configures the "netforge" logger for its process; put it back afterwards so
    later tests do not log into this test's closed capture stream."""
    logger = logging.getLogger("netforge")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_cli_summary_prints_a_table(capsys, restore_logging):
    main(["-q", "summary", str(LENET), "--batch", "8"])  # returns normally on success
    out = capsys.readouterr().out
    assert "one multiply-add = 2 FLOPs" in out
    assert "Total params: 431,080" in out
    conv1 = next(line for line in out.splitlines() if line.startswith("conv1 "))
    assert "8×20×24×24" in conv1 and "520" in conv1


def test_cli_summary_missing_file_is_exit_code_2(tmp_path, restore_logging):
    with pytest.raises(SystemExit) as done:
        main(["summary", str(tmp_path / "none.prototxt")])
    assert done.value.code == 2

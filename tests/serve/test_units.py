"""The serve library's pieces on their own: path confinement, form fields, the SVG chart,
and the deploy net derived from a train net."""

from __future__ import annotations

import os

import pytest

from netforge import netforge_pb2 as pb
from netforge.config.loading import load_net_param
from netforge.serve import charts, networks
from netforge.serve.forms import Fields, FormError
from netforge.serve.workspace import PathRefused, Workspace


def test_workspace_resolve(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (ws.root / "a" / "b").mkdir(parents=True)
    assert ws.resolve("a/b") == ws.root / "a" / "b"
    assert ws.resolve("a\\b") == ws.root / "a" / "b"
    assert ws.resolve("./a") == ws.root / "a"
    for bad, words in (("", "empty path"), ("a/../..", '".."'), ("/tmp", "absolute"),
                       ("a\x00", "NUL"), ("missing", "does not exist")):
        with pytest.raises(PathRefused, match=words):
            ws.resolve(bad)
    os.symlink(tmp_path, ws.root / "up")
    with pytest.raises(PathRefused, match="leads outside"):
        ws.resolve("up")
    os.symlink(ws.root / "a", ws.root / "inside")  # a link that stays inside is fine
    assert ws.resolve("inside/b") == ws.root / "a" / "b"
    with pytest.raises(PathRefused, match="not a plain file name"):
        ws.child(ws.root, "../x")
    assert ws.folders() == ["a", "inside", "up"]


def test_fields():
    fields = Fields({"n": "3", "x": " 0.5 ", "f": "on", "c": "b", "empty": ""})
    assert fields.integer("n", low=1) == 3 and fields.number("x") == 0.5
    assert fields.flag("f") is True and fields.flag("missing") is False
    assert fields.integer("empty", 7) == 7 and fields.choice("c", ("a", "b")) == "b"
    with pytest.raises(FormError, match='"n" must be at most 2'):
        fields.integer("n", high=2)
    with pytest.raises(FormError, match='"x" must be below 0.5'):
        fields.number("x", high=0.5, high_open=True)
    with pytest.raises(FormError, match='"c" must be one of a, z'):
        fields.choice("c", ("a", "z"))
    with pytest.raises(FormError, match='"c" must be true or false'):
        fields.flag("c")


def test_chart_series_and_svg():
    records = [{"phase": "train", "iteration": i, "loss": 2.0 / (i + 1), "lr": 0.01}
               for i in range(0, 50, 10)]
    records += [{"phase": "test", "iteration": 0, "outputs": {"accuracy": 0.1, "loss": 2.3}},
                {"phase": "test", "iteration": 40, "outputs": {"accuracy": "nan", "loss": 0.4}}]
    panels = charts.series_of(records)
    assert panels["loss"]["train loss"] == [(i, 2.0 / (i + 1)) for i in range(0, 50, 10)]
    assert panels["loss"]["test loss"] == [(0, 2.3), (40, 0.4)]
    assert panels["outputs"]["test accuracy"] == [(0, 0.1)]  # NaN left out
    assert panels["lr"]["lr"] == [(i, 0.01) for i in range(0, 50, 10)]
    svg = charts.chart_svg(records, width=700, panel_height=200)
    assert svg.count("<polyline") == 4 and 'data-records="7"' in svg
    # The loss panel spans the lowest (train, 2/41) to the highest (test, 2.3) loss over its
    # plot area, y = 24 (top) to 172 (foot): each point placed by that linear map.
    line = svg.split('data-name="train loss"')[1].split('points="')[1].split('"')[0]
    ys = [float(p.split(",")[1]) for p in line.split()]
    low, high = 2.0 / 41, 2.3
    expected = [172 - (2.0 / (i + 1) - low) / (high - low) * 148 for i in range(0, 50, 10)]
    assert ys == pytest.approx(expected, abs=0.06)
    assert "no data yet" in charts.chart_svg([])


def test_deploy_net_of_lenet():
    train = load_net_param(networks.CONFIGS / "lenet_train_test.prototxt")
    prepared = networks.prepare_train_net(train, {"train": "/d/train", "val": "/d/val"},
                                          None, classes=7, batch_size=16)
    data = [layer for layer in prepared.layer if layer.type == "Data"]
    assert [d.data_param.source for d in data] == ["/d/train", "/d/val"]
    assert [d.data_param.batch_size for d in data] == [16, 100]
    assert next(la for la in prepared.layer if la.name == "ip2").inner_product_param \
        .num_output == 7
    deploy = networks.deploy_net(prepared, (1, 32, 32))
    types = [layer.type for layer in deploy.layer]
    assert types[0] == "Input" and types[-1] == "Softmax" and "Accuracy" not in types
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 1, 28, 28]  # crop_size 28
    assert deploy.layer[-1].bottom == ["ip2"] and deploy.layer[-1].top == ["prob"]
    assert all(not layer.include for layer in deploy.layer)
    assert networks.test_iterations(101, 100) == 2
    networks.fit_test_batch(prepared, 60)  # a val split smaller than the TEST batch
    assert [d.data_param.batch_size for d in prepared.layer if d.type == "Data"] == [16, 60]
    assert isinstance(networks.transform_of(prepared), pb.TransformationParameter)

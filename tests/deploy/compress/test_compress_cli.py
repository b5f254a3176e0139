"""``netforge compress`` end to end on a small HDF5 problem: the report's sizes against the
files on disk, the .nfz loading identically through `netforge test`, Net(weights=...) and a
frozen model, and bad input as one error line."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from netforge.deploy.frozen import load_frozen
from netforge.net import Net
from netforge.nfz import read_nfz
from tests.cli.test_cli import one_error_line, run

TRAIN_TEST = """
name: "blobs"
layer { name: "data" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param { source: "LIST" batch_size: 20 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
        include { phase: TEST } }
"""

DEPLOY = """
name: "blobs"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 20 dim: 1 dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 16 } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    centres = rng.standard_normal((3, 6)) * 2
    data = (centres[labels] + rng.standard_normal((200, 6))).astype(np.float32)
    with h5py.File(root / "data.h5", "w") as handle:
        # 1x2x3 "images": freeze wants an image-shaped input; InnerProduct flattens them
        handle["data"], handle["label"] = data.reshape(200, 1, 2, 3), labels.astype(np.float32)
    (root / "list.txt").write_text(f"{root / 'data.h5'}\n")
    (root / "net.prototxt").write_text(TRAIN_TEST.replace("LIST", str(root / "list.txt")))
    (root / "deploy.prototxt").write_text(DEPLOY)
    (root / "solver.prototxt").write_text(
        f'net: "{root / "net.prototxt"}" test_iter: 10 test_interval: 1000 base_lr: 0.05 '
        f'momentum: 0.9 lr_policy: "fixed" max_iter: 60 snapshot_prefix: "{root / "s"}" '
        'random_seed: 1 display: 0\n')
    result = run("train", "--solver", str(root / "solver.prototxt"))
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def compressed(trained):
    out = trained / "w.nfz"
    result = run("compress", "--solver", str(trained / "solver.prototxt"), "--weights",
                 str(trained / "s_iter_60.caffemodel"), "--sparsity", "ip1=0.5,ip2=0.25",
                 "--bits", "3", "--finetune-iter", "10", "--output", str(out))
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_report_sizes_match_the_files(trained, compressed):
    out, report = compressed
    total = next(line for line in report.splitlines() if line.startswith("total"))
    fields = total.split()
    nfz_bytes, caffemodel_bytes = int(fields[-3]), int(fields[-2])
    assert nfz_bytes == out.stat().st_size
    # the .caffemodel that `netforge train` wrote for the same net
    assert caffemodel_bytes == (trained / "s_iter_60.caffemodel").stat().st_size
    ip1 = next(line for line in report.splitlines() if line.startswith("ip1"))
    # ip1: 96 weights + 16 biases, half the weights pruned
    assert ip1.split()[1:3] == ["112", str(48 + 16)]
    layers = {layer.name: layer.ByteSize() for layer in read_nfz(out).layer}
    assert int(ip1.split()[5]) == layers["ip1"]
    assert re.search(r"stage 1 \(prune\) .*accuracy = ", report)


def test_the_nfz_holds_pruned_shared_weights(trained, compressed):
    out, _ = compressed
    net = Net(str(trained / "deploy.prototxt"), "test", weights=str(out))
    w1 = net.params["ip1"][0].data
    assert np.count_nonzero(w1) == 48
    assert len(np.unique(w1[w1 != 0])) <= 8
    w2 = net.params["ip2"][0].data
    assert np.count_nonzero(w2) == 36 and len(np.unique(w2[w2 != 0])) <= 8


def test_nfz_predicts_identically_through_test_net_and_frozen_model(trained, compressed):
    out, _ = compressed
    # `netforge test` on the .nfz and on a .caffemodel of the same weights
    as_caffemodel = trained / "from_nfz.caffemodel"
    Net(str(trained / "net.prototxt"), "test", weights=str(out)).save(str(as_caffemodel))
    scores = [run("test", "--model", str(trained / "net.prototxt"), "--weights", str(w),
                  "--iterations", "10") for w in (out, as_caffemodel)]
    assert scores[0].returncode == 0, scores[0].stderr
    assert scores[0].stdout == scores[1].stdout and "accuracy = " in scores[0].stdout
    # a frozen model made from the .nfz, against Net(weights=...)
    frozen = trained / "m.nf"
    result = run("freeze", "--model", str(trained / "deploy.prototxt"), "--weights", str(out),
                 "--output", str(frozen))
    assert result.returncode == 0, result.stderr
    x = np.random.default_rng(2).standard_normal((20, 1, 2, 3)).astype(np.float32)
    direct = Net(str(trained / "deploy.prototxt"), "test", weights=str(out)).forward(data=x)
    via_frozen = load_frozen(frozen).net.forward(data=x)
    np.testing.assert_array_equal(direct["prob"], via_frozen["prob"])


def test_a_damaged_nfz_is_one_error_line(trained, compressed, tmp_path):
    out, _ = compressed
    damaged = tmp_path / "bad.nfz"
    data = bytearray(out.read_bytes())
    data[40] ^= 0x55
    damaged.write_bytes(bytes(data))
    result = run("test", "--model", str(trained / "net.prototxt"), "--weights", str(damaged))
    assert "damaged .nfz file (checksum mismatch)" in one_error_line(result)


def test_recipe_naming_an_unknown_layer_is_one_error_line(trained, tmp_path):
    recipe = tmp_path / "r.prototxt"
    recipe.write_text('stage { kind: PRUNE layer { name: "ip9" sparsity: 0.5 } }\n')
    result = run("compress", "--solver", str(trained / "solver.prototxt"), "--weights",
                 str(trained / "s_iter_60.caffemodel"), "--recipe", str(recipe), "--output",
                 str(tmp_path / "x.nfz"))
    line = one_error_line(result)
    assert "recipe names ip9, which are not weighted layers of the net (ip1, ip2)" in line
    assert not (tmp_path / "x.nfz").exists()


def test_sensitivity_prints_a_table_per_layer(trained, tmp_path):
    result = run("compress", "--solver", str(trained / "solver.prototxt"), "--weights",
                 str(trained / "s_iter_60.caffemodel"), "--sensitivity", "--plot",
                 str(tmp_path / "s.png"))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
            if line.startswith("ip")}
    assert set(rows) == {"ip1", "ip2"} and len(rows["ip1"]) == 8
    # at sparsity 0 the net is the dense one: both rows start at the same accuracy
    assert rows["ip1"][0] == rows["ip2"][0]
    assert (tmp_path / "s.png").stat().st_size > 1000

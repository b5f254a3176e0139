"""``netforge extract-features`` (Caffe's extract_features) and ``netforge upgrade`` (Caffe's
upgrade_net_proto_text/_binary, upgrade_solver_proto_text)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.cli.main import main
from netforge.data.records import datum_to_array, parse_datum
from netforge.data.stores import LmdbReader
from netforge.net import Net
from netforge.weights import read_caffemodel

NET = """name: "f"
layer { name: "data" type: "DummyData" top: "x"
        dummy_data_param { shape { dim: 3 dim: 4 } data_filler { type: "uniform" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "feat"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "prob" type: "Softmax" bottom: "feat" top: "prob" }
"""


def cli(*args):
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "net.prototxt"
    model.write_text(NET)
    weights = tmp_path / "w.caffemodel"
    Net(str(model), "test", seed=3).save(str(weights))
    return model, weights


def _reference(model, weights, batches):
    """The same net, run by hand: DummyData's uniform filler draws anew each batch from the
    net's seeded generator, so a fresh net with the same seed gives the same batches."""
    net = Net(str(model), "test", weights=str(weights), seed=11)
    out = {"feat": [], "prob": []}
    for _ in range(batches):
        net.forward()
        for name in out:
            out[name].append(np.array(net.blobs[name].data))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def test_extract_features_lmdb_keys_and_datums_as_caffe(files, tmp_path, monkeypatch):
    model, weights = files
    original = Net  # the command imports Net when it runs: seed its DummyData like ours
    monkeypatch.setattr("netforge.net.Net", lambda *a, **k: original(*a, seed=11, **k))
    code = cli("extract-features", "--model", model, "--weights", weights, "--blobs",
               "feat,prob", "-o", f"{tmp_path / 'feat_db'},{tmp_path / 'prob_db'}", "-n", 2)
    assert code == 0
    expected = _reference(model, weights, 2)
    for name in ("feat", "prob"):
        with LmdbReader(tmp_path / f"{name}_db") as reader:
            records = list(reader)
        assert [key for key, _ in records] == [f"{i:010d}".encode() for i in range(6)]
        rows = []
        for _, value in records:
            datum = parse_datum(value)
            assert (datum.channels, datum.height, datum.width) == (2, 1, 1)
            rows.append(datum_to_array(datum)[0].ravel())
        np.testing.assert_allclose(np.stack(rows), expected[name], rtol=1e-6)


@pytest.mark.parametrize("fmt, suffix", [("npy", ".npy"), ("hdf5", ".h5")])
def test_extract_features_npy_and_hdf5(files, tmp_path, monkeypatch, fmt, suffix):
    model, weights = files
    original = Net
    monkeypatch.setattr("netforge.net.Net", lambda *a, **k: original(*a, seed=11, **k))
    out = tmp_path / f"feat{suffix}"
    assert cli("extract-features", "--model", model, "--weights", weights, "--blobs", "feat",
               "-o", out, "-n", 3, "--format", fmt) == 0
    array = np.load(out) if fmt == "npy" else h5py.File(out, "r")["data"][()]
    np.testing.assert_allclose(array, _reference(model, weights, 3)["feat"], rtol=1e-6)


def test_extract_features_errors_are_one_line(files, tmp_path, capsys):
    model, weights = files
    assert cli("extract-features", "--model", model, "--weights", weights, "--blobs", "nope",
               "-o", tmp_path / "x", "-n", 1) == 2
    assert 'no blob(s) nope' in capsys.readouterr().err
    assert cli("extract-features", "--model", model, "--weights", weights, "--blobs",
               "feat,prob", "-o", tmp_path / "x", "-n", 1) == 2
    assert "one output per blob" in capsys.readouterr().err


V1_NET = """name: "old"
input: "data"
input_dim: 1
input_dim: 1
input_dim: 4
input_dim: 4
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 blobs_lr: 2
         inner_product_param { num_output: 3 } }
layers { name: "relu" type: RELU bottom: "ip" top: "ip" }
"""


def test_upgrade_v1_net_text_and_binary(tmp_path):
    old = tmp_path / "old.prototxt"
    old.write_text(V1_NET)
    new = tmp_path / "new.prototxt"
    assert cli("upgrade", old, new) == 0
    net = config.parse_text(new.read_text(), pb.NetParameter())
    assert not net.layers and not net.input
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("input", "Input"), ("ip", "InnerProduct"), ("relu", "ReLU")]
    assert [p.lr_mult for p in net.layer[1].param] == [1, 2]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 1, 4, 4]
    # a V1 binary .caffemodel: the weights survive, the layers are upgraded
    v1 = pb.NetParameter(name="old")
    layer = v1.layers.add(name="ip", type=pb.V1LayerParameter.INNER_PRODUCT)
    blob = layer.blobs.add(num=1, channels=1, height=3, width=16)
    blob.data.extend(np.arange(48, dtype=np.float32).tolist())
    binary = tmp_path / "old.caffemodel"
    binary.write_bytes(v1.SerializeToString())
    out = tmp_path / "new.caffemodel"
    assert cli("upgrade", binary, out) == 0
    written = pb.NetParameter()
    written.ParseFromString(out.read_bytes())
    assert not written.layers and written.layer[0].type == "InnerProduct"
    assert list(written.layer[0].blobs[0].data) == list(range(48))
    assert read_caffemodel(out).layer[0].name == "ip"


def test_upgrade_solver_type_enum_and_refuses_to_overwrite(tmp_path, capsys):
    old = tmp_path / "solver.prototxt"
    old.write_text('net: "n.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nsolver_type: ADAM\n'
                   "momentum: 0.9\n")
    new = tmp_path / "new_solver.prototxt"
    assert cli("upgrade", old, new) == 0
    solver = config.parse_text(new.read_text(), pb.SolverParameter())
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    assert cli("upgrade", old, new) == 2
    assert "already exists" in capsys.readouterr().err

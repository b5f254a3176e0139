"""The command line end to end: bad input gives one line and exit 2; convert → train → test
on a small MNIST sample; Caffe's own LeNet files train unchanged but for paths and mode."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netforge import netforge_pb2 as pb
from netforge.weights import read_caffemodel

ROOT = Path(__file__).resolve().parents[2]


def run(*args, cwd=None):
    env = dict(os.environ, NETFORGE_DEBUG="0")
    return subprocess.run([sys.executable, "-m", "netforge", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=600)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("netforge: error")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def mnist_sample(tmp_path_factory):
    """300 digits as PNG class folders, converted to LMDB train/val."""
    root = tmp_path_factory.mktemp("mnist")
    with gzip.open(ROOT / "tests" / "data" / "mnist_4k.csv.gz", "rt") as handle:
        rows = [line.split(",") for line in handle]
    for i, row in enumerate(rows[::13][:300]):
        pixels = np.array(row[:784], dtype=np.uint8).reshape(28, 28)
        folder = root / "digits" / row[784].strip()
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    result = run("convert", str(root / "digits"), str(root / "db"), "--gray",
                 "--val-fraction", "0.2")
    assert result.returncode == 0, result.stderr
    return root


def _caffe_lenet_text() -> str:
    """configs/lenet_train_test.prototxt as Caffe's examples/mnist file has it: the same
    layers, names and fields, without the demo's crop_size lines."""
    text = (ROOT / "configs" / "lenet_train_test.prototxt").read_text()
    kept = [line for line in text.splitlines() if not line.strip().startswith("crop_size:")]
    assert len(kept) == len(text.splitlines()) - 2
    return "\n".join(kept) + "\n"


def _lenet_files(root: Path) -> Path:
    """Caffe's LeNet train_test + solver, changed only in paths and solver_mode."""
    net = _caffe_lenet_text()
    net = net.replace("demo_run/mnist/train", str(root / "db" / "train"))
    net = net.replace("demo_run/mnist/val", str(root / "db" / "val"))
    (root / "lenet_train_test.prototxt").write_text(net)
    solver = (f'net: "{root}/lenet_train_test.prototxt"\ntest_iter: 1\ntest_interval: 20\n'
              'base_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\nlr_policy: "inv"\n'
              "gamma: 0.0001\npower: 0.75\ndisplay: 10\nmax_iter: 40\nsnapshot: 20\n"
              f'snapshot_prefix: "{root}/lenet"\nsolver_mode: CPU\n')
    path = root / "lenet_solver.prototxt"
    path.write_text(solver)
    return path


def test_convert_train_test_end_to_end(mnist_sample):
    root = mnist_sample
    assert (root / "db" / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    solver = _lenet_files(root)
    result = run("train", "--solver", str(solver))
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stderr
    assert "Solving LeNet" in log
    assert "Iteration 10 (" in log and "Train net output #0: loss = " in log
    assert "Iteration 20, Testing net (#0)" in log and "Test net output #0: accuracy = " in log
    assert f"Snapshotting to binary proto file {root}/lenet_iter_40.caffemodel" in log
    # The snapshot is a Caffe caffemodel: layer names and blob shapes as Caffe writes them.
    model = read_caffemodel(root / "lenet_iter_40.caffemodel")
    shapes = {layer.name: [list(b.shape.dim) for b in layer.blobs] for layer in model.layer}
    assert shapes["conv1"] == [[20, 1, 5, 5], [20]]
    assert shapes["conv2"] == [[50, 20, 5, 5], [50]]
    assert shapes["ip1"] == [[500, 800], [500]]
    assert shapes["ip2"] == [[10, 500], [10]]
    rows = parse_log_like_caffe(log)
    assert [r["NumIters"] for r in rows["train"]] == [0, 10, 20, 30]
    assert all("loss" in r and "LearningRate" in r for r in rows["train"])
    assert [r["NumIters"] for r in rows["test"]] == [0, 20, 40]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows["test"])
    result = run("test", "--model", str(root / "lenet_train_test.prototxt"), "--weights",
                 str(root / "lenet_iter_40.caffemodel"), "--iterations", "2")
    assert result.returncode == 0, result.stderr
    assert "accuracy = " in result.stdout and "loss = " in result.stdout
    # Resuming from the solverstate continues the same run.
    result = run("train", "--solver", str(solver), "--snapshot",
                 str(root / "lenet_iter_20.solverstate"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Restoring previous solver status" in result.stderr
    assert "Iteration 30 (" in result.stderr and "Iteration 10 (" not in result.stderr


def parse_log_like_caffe(log: str) -> dict:
    """Caffe's tools/extra/parse_log.py conventions: glog timestamps on every line, the
    iteration from `Iteration N`, outputs from `(Train|Test) net output #k: name = v`, the
    rate from `lr = x`; a test row is keyed by the iteration of its `Testing net` line."""
    import datetime
    import re

    iteration_re = re.compile(r"Iteration (\d+)")
    output_re = re.compile(r"(Train|Test) net output #(\d+): (\S+) = ([.\deE+-]+)")
    lr_re = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
    rows = {"train": [], "test": []}
    iteration, lr = -1, None
    for line in log.splitlines():
        fields = line.split()
        if not re.match(r"[IWEF]\d{4}$", fields[0] if fields else ""):
            continue  # parse_log.py skips lines without a glog timestamp too
        stamp = datetime.datetime.strptime(fields[0][1:] + " " + fields[1], "%m%d %H:%M:%S.%f")
        assert stamp.year == 1900  # parse_log.py adds the year itself
        match = iteration_re.search(line)
        if match:
            iteration = int(match.group(1))
        match = lr_re.search(line)
        if match:
            lr = float(match.group(1))
            if rows["train"] and rows["train"][-1]["NumIters"] == iteration:
                rows["train"][-1]["LearningRate"] = lr
        match = output_re.search(line)
        if match:
            kind = match.group(1).lower()
            table = rows[kind]
            if not table or table[-1]["NumIters"] != iteration:
                table.append({"NumIters": iteration})
            table[-1][match.group(3)] = float(match.group(4))
    return rows


def test_demo_crop_is_a_no_op_on_caffes_28x28_databases(mnist_sample):
    """The demo config's crop_size 28 changes nothing on a 28x28 database: its TEST data
    equals that of Caffe's original file, batch for batch."""
    from netforge import config
    from netforge.net import Net

    def test_data(text):
        text = text.replace("demo_run/mnist/val", str(mnist_sample / "db" / "val"))
        text = text.replace("demo_run/mnist/train", str(mnist_sample / "db" / "train"))
        net = Net(config.parse_text(text, pb.NetParameter()), "test")
        batches = []
        try:
            for _ in range(2):
                net.forward()
                batches.append(net.blobs["data"].data.copy())
        finally:
            net.close()
        return batches

    demo = test_data((ROOT / "configs" / "lenet_train_test.prototxt").read_text())
    caffe = test_data(_caffe_lenet_text())
    assert demo[0].shape == (100, 1, 28, 28)
    for a, b in zip(demo, caffe, strict=True):
        np.testing.assert_array_equal(a, b)


def test_convert_refuses_existing_destination(mnist_sample):
    line = one_error_line(run("convert", str(mnist_sample / "digits"),
                              str(mnist_sample / "db")))
    assert "db" in line and "overwrite" in line


def _net_with(tmp_path, body: str) -> Path:
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "bad"\nlayer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
                    "  input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } }\n}\n" + body)
    return path


def test_typo_field_names_file_line_and_field(tmp_path):
    path = _net_with(tmp_path, 'layer {\n  name: "conv1"\n  type: "Convolution"\n'
                     '  bottom: "data"\n  top: "conv1"\n'
                     "  convolution_param { num_output: 2 kernal_size: 3 }\n}\n")
    line = one_error_line(run("test", "--model", str(path), "--weights", str(path)))
    assert f"{path}:13:" in line
    assert 'unknown field "kernal_size" in ConvolutionParameter' in line


def test_unknown_layer_type_lists_known_types(tmp_path):
    path = _net_with(tmp_path, 'layer { name: "conv1" type: "Convolutoin" bottom: "data" '
                     'top: "c" }\n')
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(pb.NetParameter(name="w").SerializeToString())
    line = one_error_line(run("test", "--model", str(path), "--weights", str(weights)))
    assert 'unknown layer type "Convolutoin" (layer "conv1")' in line
    assert "known types:" in line and "Convolution" in line


def test_missing_bottom_names_layer_and_blob(tmp_path):
    path = _net_with(tmp_path, 'layer { name: "relu" type: "ReLU" bottom: "dta" top: "r" }\n')
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(pb.NetParameter(name="w").SerializeToString())
    line = one_error_line(run("test", "--model", str(path), "--weights", str(weights)))
    assert 'layer "relu"' in line and 'unknown bottom blob "dta"' in line


def test_damaged_weights_file(tmp_path):
    path = _net_with(tmp_path, "")
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"\x0a\xff\xff\xff")
    line = one_error_line(run("test", "--model", str(path), "--weights", str(weights)))
    assert str(weights) in line and "damaged" in line


def test_help_and_version():
    for command in ([], ["convert"], ["train"], ["test"]):
        result = run(*command, "--help")
        assert result.returncode == 0 and "Usage:" in result.stdout
    result = run("--version")
    assert result.returncode == 0 and "netforge" in result.stdout


def test_gpu_request_without_cupy_is_a_clear_error(tmp_path):
    path = _net_with(tmp_path, "")
    try:
        import cupy  # noqa: F401
    except ImportError:
        line = one_error_line(run("test", "--model", str(path), "--weights", str(path),
                                  "--gpu", "0"))
        assert "CuPy" in line
    else:
        pytest.skip("CuPy is installed here")

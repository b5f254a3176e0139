"""Issue 18 cases at the command line: silent wrong results become refusals or warnings that
name what is wrong, and tracebacks become one line (exit 2, or 1 for a failed run)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from netforge.cli.main import main
from netforge.net import Net


def cli(capsys, *args):
    """Run ``netforge ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("netforge: error: ")]
    assert len(lines) == 1, err
    return lines[0]


DEPLOY = """name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "IP1" type: "InnerProduct" bottom: "data" top: "score"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
"""


@pytest.fixture
def deploy_files(tmp_path):
    """A deploy net whose layer "IP1" the weights file calls "ip1" (a rename)."""
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    other = tmp_path / "trained.prototxt"
    other.write_text(DEPLOY.replace('"IP1"', '"ip1"'))
    weights = tmp_path / "w.caffemodel"
    Net(str(other), "test", seed=1).save(str(weights))
    image = tmp_path / "img.png"
    Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(image)
    return model, weights, image


def test_freeze_refuses_weights_lacking_a_layer(capsys, deploy_files, tmp_path):
    model, weights, _ = deploy_files
    out = tmp_path / "m.nf"
    code, _, err = cli(capsys, "freeze", "--model", model, "--weights", weights, "-o", out)
    assert code == 2
    assert "has no weights for layer(s) IP1" in error_line(err)
    assert not out.exists()


def test_predict_and_test_warn_naming_layers_without_weights(capsys, deploy_files):
    model, weights, image = deploy_files
    code, out, err = cli(capsys, "predict", model, image, "--weights", weights)
    assert code == 0  # it still runs, as Caffe would ...
    assert "has no weights for layer(s) IP1" in err  # ... but says so
    code, out, err = cli(capsys, "test", "--model", model, "--weights", weights,
                         "--iterations", "1")
    assert code == 0 and "has no weights for layer(s) IP1" in err


def test_predict_with_matching_weights_does_not_warn(capsys, deploy_files, tmp_path):
    model, _, image = deploy_files
    weights = tmp_path / "good.caffemodel"
    Net(str(model), "test", seed=2).save(str(weights))
    code, _, err = cli(capsys, "predict", model, image, "--weights", weights)
    assert code == 0 and "no weights" not in err


TRAIN_NET = """name: "t"
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
                           data_filler { type: "gaussian" } data_filler { type: "constant" } } }
layer { name: "IP" type: "InnerProduct" bottom: "x" top: "s"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }
"""


def _solver(tmp_path, net_text=TRAIN_NET, extra="", name="solver.prototxt", max_iter=2):
    net = tmp_path / f"{name}.net.prototxt"
    net.write_text(net_text)
    solver = tmp_path / name
    solver.write_text(f'net: "{net}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: {max_iter}\n'
                      f'display: 0\nsnapshot_prefix: "{tmp_path}/snap"\n{extra}')
    return solver


def test_snapshot_from_a_net_with_a_renamed_layer_is_refused(capsys, tmp_path):
    code, _, err = cli(capsys, "-q", "train", "--solver", _solver(tmp_path))
    assert code == 0, err
    state = tmp_path / "snap_iter_2.solverstate"
    assert state.exists()
    renamed = _solver(tmp_path, TRAIN_NET.replace('"IP"', '"ip_renamed"'),
                      name="renamed.prototxt", max_iter=4)
    code, _, err = cli(capsys, "train", "--solver", renamed, "--snapshot", state)
    assert code == 2
    line = error_line(err)
    assert "have no layer(s) ip_renamed of this net" in line and "--weights" in line


def test_weights_and_state_swapped_say_what_each_file_is(capsys, tmp_path):
    solver = _solver(tmp_path)
    assert cli(capsys, "-q", "train", "--solver", solver)[0] == 0
    state, model = tmp_path / "snap_iter_2.solverstate", tmp_path / "snap_iter_2.caffemodel"
    code, _, err = cli(capsys, "train", "--solver", solver, "--weights", state)
    assert code == 2 and "a .solverstate (training state), not weights" in error_line(err)
    code, _, err = cli(capsys, "train", "--solver", solver, "--snapshot", model)
    assert code == 2 and "a weights file, not a solver state" in error_line(err)


def test_snapshot_prefix_under_a_regular_file_is_refused_before_training(capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    solver = _solver(tmp_path, extra="")
    solver.write_text(solver.read_text().replace(f'"{tmp_path}/snap"', f'"{tmp_path}/afile/s"'))
    code, _, err = cli(capsys, "train", "--solver", solver)
    assert code == 2
    line = error_line(err)
    assert "snapshot_prefix" in line and "afile is a file, not a folder" in line
    assert "Iteration 0" not in err  # refused before any training


@pytest.mark.parametrize("extra, message", [("iter_size: 0\n", "iter_size must be >= 1"),
                                            ("test_iter: 0\ntest_interval: 1\n",
                                             "test_iter must be > 0")])
def test_zero_iter_size_and_test_iter_are_one_line(capsys, tmp_path, extra, message):
    code, _, err = cli(capsys, "train", "--solver", _solver(tmp_path, extra=extra))
    assert code == 2 and message in error_line(err)


BIG = TRAIN_NET.replace("dim: 4 dim: 3 }", "dim: 4000000 dim: 3000000 }")


@pytest.mark.parametrize("command", ["train", "summary", "predict"])
def test_a_batch_that_does_not_fit_in_memory_is_one_line(capsys, tmp_path, command):
    if command == "train":
        args = ["train", "--solver", _solver(tmp_path, BIG)]
    else:
        deploy = tmp_path / "big_deploy.prototxt"
        deploy.write_text(DEPLOY.replace("dim: 1 dim: 3 dim: 4 dim: 4",
                                         "dim: 100000 dim: 3 dim: 4000 dim: 4000"))
        if command == "summary":
            args = ["summary", deploy]
        else:
            image = tmp_path / "i.png"
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
            args = ["predict", deploy, image, "--weights", tmp_path / "none.caffemodel"]
    code, _, err = cli(capsys, *args)
    assert code == 1
    line = error_line(err)
    assert "not enough memory" in line and "TiB" in line and "smaller" in line


def test_predict_never_sizes_its_batch_above_the_number_of_images(capsys, deploy_files,
                                                                   monkeypatch, tmp_path):
    from netforge.deploy import predict

    model, _, image = deploy_files
    weights = tmp_path / "good.caffemodel"
    Net(str(model), "test", seed=2).save(str(weights))
    seen = []
    original = predict.Predictor.__init__

    def recording(self, *args, batch_size=32, **kwargs):
        seen.append(batch_size)
        original(self, *args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(predict.Predictor, "__init__", recording)
    code, _, err = cli(capsys, "predict", model, image, image, "--weights", weights,
                       "--batch-size", "64")
    assert code == 0, err
    assert seen == [2]


@pytest.mark.parametrize("damage", ["empty", "truncated", "truncated-other-name"])
def test_damaged_or_empty_frozen_model_is_not_called_a_prototxt(capsys, tmp_path, damage):
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    weights = tmp_path / "w.caffemodel"
    Net(str(model), "test", seed=1).save(str(weights))
    frozen = tmp_path / "m.nf"
    assert cli(capsys, "freeze", "--model", model, "--weights", weights, "-o", frozen)[0] == 0
    data = frozen.read_bytes()
    target = tmp_path / ("model.bin" if damage == "truncated-other-name" else "m.nf")
    target.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    code, _, err = cli(capsys, "predict", target, image)
    line = error_line(err)
    assert code == 2 and "prototxt" not in line
    expected = "empty file (0 bytes)" if damage == "empty" else "damaged or truncated frozen"
    assert expected in line and str(target) in line


def test_a_caffemodel_given_as_the_model_is_named_binary(capsys, deploy_files):
    _, weights, image = deploy_files
    code, _, err = cli(capsys, "predict", weights, image)
    assert code == 2 and "a binary file, not a protobuf text file" in error_line(err)


ELTWISE = """layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 6 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 4 } }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: NUM } }
layer { name: "sum" type: "Eltwise" bottom: "ip1" bottom: "ip2" top: "sum" }
"""


def test_eltwise_shape_error_names_the_users_blobs_not_inserted_splits(capsys, tmp_path):
    path = tmp_path / "elt.prototxt"
    path.write_text(ELTWISE.replace("NUM", "3"))
    code, _, err = cli(capsys, "summary", path)
    line = error_line(err)
    assert code == 2 and "_split_" not in line
    assert 'bottom "ip2" has shape (2, 3) but bottom "ip1" has (2, 4)' in line


def test_eltwise_shape_error_after_a_reshape_names_the_users_blobs(tmp_path):
    from netforge.errors import ShapeError

    path = tmp_path / "elt.prototxt"
    path.write_text(ELTWISE.replace("NUM", "4"))
    net = Net(str(path), "test")
    net.blobs["ip2"].reshape(3, 4)  # as a caller could, then a reshape pass checks shapes
    with pytest.raises(ShapeError) as info:
        net.plan.reshape(len(net.layers) - 1)
    assert "_split_" not in str(info.value) and '"ip1"' in str(info.value)


def test_gflags_spelling_of_caffe_scripts_is_understood(capsys, tmp_path):
    solver = _solver(tmp_path)
    code, _, err = cli(capsys, "-q", "train", "-solver", solver, "-sigint_effect=stop")
    assert code == 0, err
    assert (tmp_path / "snap_iter_2.caffemodel").exists()


def _images(tmp_path):
    root = tmp_path / "src"
    for label in "ab":
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(root / label / f"{i}.png")
    (root / "a" / "bad.png").write_bytes(b"not an image")
    (root / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 30)
    return root


def test_val_split_is_chosen_among_readable_images(capsys, tmp_path):
    from netforge.data.stores import LmdbReader

    code, out, err = cli(capsys, "convert", _images(tmp_path), tmp_path / "db",
                         "--val-fraction", "0.3")
    assert code == 0, err
    # 3 readable images a class: round(0.3 * 3) = 1 in val, 2 in train, for each class
    assert "(train: 4, val: 2)" in out and "skipped 2 unreadable" in out
    with LmdbReader(tmp_path / "db" / "val") as reader:
        assert len(reader) == 2


def test_encoded_skips_name_the_problem_not_a_python_object(capsys, tmp_path):
    code, out, err = cli(capsys, "convert", _images(tmp_path), tmp_path / "db", "--encoded")
    assert code == 0, err
    assert "BytesIO" not in out and "object at 0x" not in out
    assert "a/bad.png: cannot decode image: not an image format Pillow reads" in out


def test_negative_resize_says_it_must_not_be_negative(capsys, tmp_path):
    code, _, err = cli(capsys, "convert", _images(tmp_path), tmp_path / "db",
                       "--resize-height", "-5", "--resize-width", "4")
    assert code == 2 and "must be >= 0" in error_line(err)


@pytest.mark.parametrize("command", ["summary", "test"])
def test_result_commands_are_quiet_unless_verbose(capsys, deploy_files, command):
    model, weights, _ = deploy_files
    args = [command, model] if command == "summary" else [
        command, "--model", model, "--weights", weights, "--iterations", "1"]
    code, out, err = cli(capsys, *args)
    assert code == 0 and out.strip()
    assert "Creating Layer" not in err and "Initializing net" not in err
    code, _, err = cli(capsys, "-v", *args)
    assert code == 0 and "Creating Layer" in err


def test_time_prints_caffes_average_lines_on_stdout(capsys, deploy_files):
    model, _, _ = deploy_files
    code, out, _ = cli(capsys, "-q", "time", "--model", model, "--iterations", "2",
                       "--phase", "TEST")
    assert code == 0
    lines = out.splitlines()
    import re
    for name in ("Average Forward pass", "Average Backward pass", "Average Forward-Backward",
                 "Total Time"):
        assert any(re.fullmatch(rf"{name}: [0-9.e+-]+ ms\.", line) for line in lines), out


def test_a_net_given_as_the_solver_and_a_prototxt_as_weights_say_what_they_are(capsys,
                                                                               deploy_files,
                                                                               tmp_path):
    model, _, _ = deploy_files
    code, _, err = cli(capsys, "train", "--solver", model)
    assert code == 2 and "this file is a net, not a solver" in error_line(err)
    code, _, err = cli(capsys, "test", "--model", model, "--weights", model)
    assert code == 2 and "a text file (a net prototxt?), not binary weights" in error_line(err)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    code, _, err = cli(capsys, "test", "--model", model, "--weights", empty)
    assert code == 2 and "empty file (0 bytes)" in error_line(err)

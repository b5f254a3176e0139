"""Training that never loses work: divergence guard, metrics file, plots, several test nets,
callbacks, bit-exact resume with a real Data layer, and Ctrl-C through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.data.convert import convert_images
from netforge.errors import DataError, DivergenceError
from netforge.net import Net
from netforge.train.metrics import read_metrics
from netforge.train.solver import Solver
from tests.train.test_solver import NET


def _solver(tmp_path, text: str, net: str = NET, seed: int = 7, **kwargs) -> Solver:
    sp = config.parse_text(f'snapshot_prefix: "{tmp_path}/snap" random_seed: {seed} ' + text,
                           pb.SolverParameter())
    sp.train_net_param.CopyFrom(config.parse_text(net, pb.NetParameter()))
    return Solver(sp, **kwargs)


def _solver_file(tmp_path, text: str, prefix: str = "s") -> Path:
    """NET written to a file, and a solver file using it with ``text`` and a snapshot prefix."""
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}" {text} snapshot_prefix: "{tmp_path}/{prefix}"')
    return solver


# -- divergence guard ----------------------------------------------------------------------------
def test_divergence_names_iteration_and_layer_and_keeps_the_last_good_snapshot(tmp_path):
    solver = _solver(tmp_path, 'base_lr: 1000 momentum: 0.9 lr_policy: "fixed" max_iter: 200 '
                     "snapshot: 2")
    with pytest.raises(DivergenceError) as caught:
        solver.solve()
    message = str(caught.value)
    assert f"iteration {solver.iter}" in message
    assert 'InnerProduct "ip' in message or 'layer "ip' in message
    assert solver.iter < 200
    last = solver.snapshots.last
    assert last is not None and str(last) in message
    net = Net(config.parse_text(NET, pb.NetParameter()), "train")
    net.copy_from(last)  # the kept snapshot loads, and holds finite weights
    assert all(np.isfinite(p.blob.data).all() for p in net.learnable_params)
    # nothing was written after the divergence
    newest = max(int(p.name.split("_iter_")[1].split(".")[0])
                 for p in tmp_path.glob("snap_iter_*.caffemodel"))
    assert newest <= solver.iter


def test_divergence_from_a_gradient_is_caught_before_the_update(tmp_path):
    solver = _solver(tmp_path, 'base_lr: 0.1 lr_policy: "fixed" max_iter: 5')
    weights = solver.net.params["ip2"][0]
    before = weights.data.copy()

    def poison():
        weights.diff[0, 0] = np.nan

    solver.add_callback(on_gradients_ready=poison)
    with pytest.raises(DivergenceError, match='at iteration 0: the gradient of InnerProduct '
                                              '"ip2" parameter 0 became NaN'):
        solver.step(1)
    np.testing.assert_array_equal(weights.data, before)  # the update never ran


def test_cli_divergence_is_one_line_and_exit_code_1(tmp_path):
    solver = _solver_file(tmp_path, 'base_lr: 1000 momentum: 0.9 lr_policy: "fixed" '
                          "max_iter: 300 random_seed: 3")
    result = _run_cli("--quiet", "train", "--solver", str(solver))
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("netforge: error: training diverged at "
                                                   "iteration "), result.stderr


# -- metrics file and plots ------------------------------------------------------------------------
def _test_solver(tmp_path, extra="", max_iter=8):
    text = (f'net_param {{ {NET} }} test_iter: 2 test_interval: 4 base_lr: 0.1 momentum: 0.9 '
            f'lr_policy: "step" gamma: 0.5 stepsize: 4 display: 2 max_iter: {max_iter} {extra}')
    sp = config.parse_text(f'snapshot_prefix: "{tmp_path}/snap" random_seed: 7 ' + text,
                           pb.SolverParameter())
    return Solver(sp)


def test_metrics_file_records_train_and_test_and_survives_resume(tmp_path):
    solver = _test_solver(tmp_path, "snapshot: 4")
    solver.solve()
    solver.close()
    records = read_metrics(tmp_path / "snap_metrics.jsonl")
    train = [r for r in records if r["phase"] == "train"]
    test = [r for r in records if r["phase"] == "test"]
    assert [r["iteration"] for r in train] == [0, 2, 4, 6, 8]
    assert [r["iteration"] for r in test] == [0, 4, 8]
    assert train[1]["lr"] == pytest.approx(0.1) and train[3]["lr"] == pytest.approx(0.05)
    assert set(train[1]["outputs"]) == {"loss"} and train[1]["loss"] > 0
    assert all({"phase", "iteration", "outputs"} <= set(r) for r in records)

    resumed = _test_solver(tmp_path, "snapshot: 4", max_iter=10)
    resumed.solve(resume_file=tmp_path / "snap_iter_4.solverstate")
    resumed.close()
    again = read_metrics(tmp_path / "snap_metrics.jsonl")
    iterations = [(r["phase"], r["iteration"]) for r in again]
    # the records from iteration 4 on were dropped, then the resumed run appended its own
    assert iterations[:4] == [("test", 0), ("train", 0), ("train", 2), ("test", 4)]
    assert iterations[4] == ("train", 4)
    assert [i for p, i in iterations if p == "train"] == [0, 2, 4, 6, 8, 10]
    assert len(iterations) == len(set(iterations))


def test_plot_draws_metrics_and_logs(tmp_path):
    pytest.importorskip("matplotlib")
    from netforge.inspect.plot import plot_curves, read_log

    solver = _test_solver(tmp_path)
    solver.solve()
    solver.close()
    log = tmp_path / "train.log"
    log.write_text(
        "I1122 10:00:00.000000 1 solver.py:1] Iteration 0, Testing net (#0)\n"
        "I1122 10:00:00.000000 1 solver.py:1]     Test net output #0: accuracy = 0.25\n"
        "I1122 10:00:00.000000 1 solver.py:1] Iteration 0 (0 iter/s, 0.1s/2 iters), loss = 2.5\n"
        "I1122 10:00:00.000000 1 solver.py:1]     Train net output #0: loss = 2.5 "
        "(* 1 = 2.5 loss)\n"
        "I1122 10:00:00.000000 1 solver.py:1] Iteration 0, lr = 0.01\n"
        "I1122 10:00:01.000000 1 solver.py:1] Iteration 2 (2 iter/s, 1s/2 iters), loss = 1.5\n"
        "I1122 10:00:01.000000 1 solver.py:1] Iteration 2, lr = 0.009\n")
    records = read_log(log)
    assert records[0] == {"phase": "test", "iteration": 0, "net": 0,
                          "outputs": {"accuracy": 0.25}}
    assert records[1] == {"phase": "train", "iteration": 0, "loss": 2.5, "lr": 0.01,
                          "outputs": {"loss": 2.5}}
    assert records[2]["lr"] == 0.009
    out = plot_curves([tmp_path / "snap_metrics.jsonl", log], tmp_path / "curves.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 300
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(DataError, match="no training iterations"):
        plot_curves([empty], tmp_path / "x.png")


# -- several test nets, sharing, callbacks ---------------------------------------------------------
STAGED_NET = NET + """
layer { name: "acc_a" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc_a"
        include { phase: TEST stage: "a" } }
layer { name: "acc_b" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc_b"
        accuracy_param { top_k: 2 } include { phase: TEST stage: "b" } }
"""


def test_several_test_nets_with_states_share_the_train_weights(tmp_path, caplog):
    sp = config.parse_text(
        f'net_param {{ {STAGED_NET} }} test_iter: 2 test_iter: 3 '
        'test_state { stage: "a" } test_state { stage: "b" } test_interval: 3 '
        'test_compute_loss: true base_lr: 0.1 lr_policy: "fixed" max_iter: 3 '
        f'snapshot_prefix: "{tmp_path}/snap" random_seed: 1', pb.SolverParameter())
    solver = Solver(sp)
    assert len(solver.test_nets) == 2
    a, b = solver.test_nets
    assert "acc_a" in a.outputs and "acc_b" not in a.outputs
    assert "acc_b" in b.outputs and "acc_a" not in b.outputs
    for test_net in (a, b):  # shared memory, not copies
        for name in ("ip1", "ip2"):
            for mine, theirs in zip(test_net.params[name], solver.net.params[name], strict=True):
                assert np.shares_memory(mine.data, theirs.data)
    with caplog.at_level("INFO", logger="netforge"):
        solver.solve()
    text = caplog.text
    assert "Iteration 3, Testing net (#0)" in text and "Iteration 3, Testing net (#1)" in text
    assert "Test loss: " in text
    assert set(solver.test_results[0]) == {"acc_a", "loss"}
    assert set(solver.test_results[1]) == {"acc_b", "loss"}


def test_test_net_files_and_inline_test_net_params(tmp_path):
    net_file = tmp_path / "test_net.prototxt"
    net_file.write_text(STAGED_NET)
    sp = config.parse_text(
        f'train_net_param {{ {NET} }} test_net: "{net_file}" '
        f'test_net_param {{ {NET} }} test_iter: 1 test_iter: 1 test_interval: 1 '
        'base_lr: 0.1 lr_policy: "fixed" max_iter: 1 snapshot_after_train: false '
        f'snapshot_prefix: "{tmp_path}/snap"', pb.SolverParameter())
    solver = Solver(sp)
    assert len(solver.test_nets) == 2
    solver.solve()
    assert len(solver.test_results) == 2


def test_callbacks_run_at_start_gradients_and_end(tmp_path):
    solver = _solver(tmp_path, 'base_lr: 0.1 lr_policy: "fixed" max_iter: 3')
    events = []
    solver.add_callback(on_start=lambda: events.append(("start", solver.iter)),
                        on_gradients_ready=lambda: events.append(
                            ("grad", solver.iter, bool(solver.net.params["ip1"][0].diff.any()))),
                        on_end=lambda: events.append(("end", solver.iter)))
    solver.step(2)
    assert events == [("start", 0), ("grad", 0, True), ("end", 1),
                      ("start", 1), ("grad", 1, True), ("end", 2)]


# -- bit-exact resume with a Data layer ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lmdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        folder = root / "images" / label
        folder.mkdir(parents=True)
        for i in range(7):
            pixels = rng.integers(0, 256, size=(10, 10), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    convert_images(root / "images", root / "db", gray=True, seed=3)
    return root / "db"


def _data_net(db: Path) -> str:
    return f"""
    name: "data_net"
    layer {{ name: "data" type: "Data" top: "data" top: "label"
            transform_param {{ scale: 0.00390625 crop_size: 8 mirror: true }}
            data_param {{ source: "{db}" batch_size: 4 backend: LMDB }} }}
    layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
            inner_product_param {{ num_output: 6 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }}
    layer {{ name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" }}
    layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
            inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
    """


@pytest.mark.parametrize("rule", ['type: "SGD" momentum: 0.9', 'type: "Adam" momentum: 0.9'])
@pytest.mark.parametrize("snapshot_format", ["BINARYPROTO", "HDF5"])
def test_resume_is_bit_exact_with_data_layer_dropout_and_multistep(tmp_path, tiny_lmdb, rule,
                                                                    snapshot_format):
    text = (f'{rule} base_lr: 0.05 lr_policy: "multistep" gamma: 0.5 stepvalue: 3 '
            f"stepvalue: 8 weight_decay: 0.001 max_iter: 12 snapshot_format: {snapshot_format}")
    net = _data_net(tiny_lmdb)

    def losses_of(solver, n):
        seen = []
        solver.add_callback(on_gradients_ready=lambda: seen.append(
            float(solver.net.blobs["loss"].data)))
        solver.step(n)
        return seen

    def finish(solver):
        weights = [p.blob.data.copy() for p in solver.net.learnable_params]
        history = [h.copy() for slot in solver.rule.history for h in slot]
        solver.close()
        return weights, history

    straight = _solver(tmp_path / "a", text, net=net, metrics=False)
    straight_losses = losses_of(straight, 12)
    straight_state = finish(straight)
    first = _solver(tmp_path / "b", text, net=net, metrics=False)
    first_losses = losses_of(first, 6)
    _, state = first.snapshot()
    first.close()
    resumed = _solver(tmp_path / "c", text, net=net, metrics=False)
    resumed.restore(state)
    assert resumed.iter == 6 and resumed.lr == pytest.approx(0.025)
    resumed_losses = losses_of(resumed, 6)
    assert first_losses + resumed_losses == straight_losses
    for a, b in zip(straight_state, finish(resumed), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


# -- Ctrl-C through the command line ---------------------------------------------------------------
def _run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "netforge", *args], capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_sigint_stops_with_a_snapshot_that_resumes(tmp_path):
    solver = _solver_file(tmp_path, 'base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" display: 1 '
                          "max_iter: 10000000 random_seed: 3")
    net = tmp_path / "net.prototxt"
    process = subprocess.Popen([sys.executable, "-m", "netforge", "train", "--solver",
                                str(solver)], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    for line in process.stderr:
        if "Iteration 30," in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 0, rest
    assert "Optimization stopped early." in rest and "Traceback" not in rest
    states = list(tmp_path.glob("s_iter_*.solverstate"))
    assert len(states) == 1
    stopped_at = int(states[0].name.split("_iter_")[1].split(".")[0])
    assert stopped_at >= 30
    Net(str(net), "train", weights=str(states[0]).replace(".solverstate", ".caffemodel"))
    solver.write_text(solver.read_text().replace("max_iter: 10000000",
                                                 f"max_iter: {stopped_at + 5}"))
    resumed = _run_cli("train", "--solver", str(solver), "--snapshot", str(states[0]))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (tmp_path / f"s_iter_{stopped_at + 5}.caffemodel").exists()
    records = [json.loads(line) for line in (tmp_path / "s_metrics.jsonl").read_text()
               .splitlines()]
    assert records[-1]["iteration"] == stopped_at + 5


# -- finetuning from several weight files ----------------------------------------------------------
def test_finetune_from_a_comma_separated_weights_list(tmp_path):
    first = _solver(tmp_path / "one", 'base_lr: 0.1 lr_policy: "fixed"')
    first.step(1)
    file_one, _ = first.snapshot()
    renamed = NET.replace('name: "ip1"', 'name: "ip1_other"')
    second = _solver(tmp_path / "two", 'base_lr: 0.1 lr_policy: "fixed"', net=renamed, seed=99)
    second.step(1)
    file_two, _ = second.snapshot()
    # target: ip1 from file one (file two has no "ip1"), ip2 from file two (later files win),
    # and "ip2_new" in neither, so it keeps its filler initialisation
    target_net = NET + """
    layer { name: "ip2_new" type: "InnerProduct" bottom: "ip1" top: "extra"
            inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.5 } } }
    layer { name: "silence_extra" type: "Silence" bottom: "extra" }
    """
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(target_net)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{net_file}" base_lr: 0 lr_policy: "fixed" max_iter: 0 '
                           f'snapshot_prefix: "{tmp_path}/ft"')
    result = _run_cli("train", "--solver", str(solver_file), "--weights",
                      f"{file_one},{file_two}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Finetuning from {file_one}" in result.stderr
    tuned = Net(str(net_file), "train", weights=str(tmp_path / "ft_iter_0.caffemodel"))
    np.testing.assert_array_equal(tuned.params["ip1"][0].data, first.net.params["ip1"][0].data)
    np.testing.assert_array_equal(tuned.params["ip2"][0].data, second.net.params["ip2"][0].data)
    np.testing.assert_array_equal(tuned.params["ip2_new"][0].data, 0.5)


# -- the Python training API ---------------------------------------------------------------
def test_get_solver_api_and_snapshot_diff(tmp_path):
    import netforge
    from netforge.weights import read_caffemodel

    path = _solver_file(tmp_path, 'base_lr: 0.1 lr_policy: "fixed" max_iter: 4 '
                        "snapshot_diff: true random_seed: 2", prefix="api")
    solver = netforge.get_solver(str(path))
    assert solver.iter == 0 and solver.test_nets == []
    solver.step(2)
    assert solver.iter == 2
    model, state = solver.snapshot()
    saved = {layer.name: layer for layer in read_caffemodel(model).layer}
    np.testing.assert_allclose(np.array(saved["ip1"].blobs[0].diff).reshape(5, 6),
                               solver.net.params["ip1"][0].diff, rtol=1e-6)
    solver.solve()
    assert solver.iter == 4
    solver.close()
    again = netforge.get_solver(str(path))
    again.restore(str(state))
    assert again.iter == 2
    again.close()


def test_test_nets_see_the_train_nets_batchnorm_statistics(tmp_path):
    batch_norm = 'layer { name: "bn" type: "BatchNorm" bottom: "ip1" top: "ip1" }\n'
    bn_net = NET.replace('layer { name: "relu"', batch_norm + 'layer { name: "relu"', 1)
    assert '"bn"' in bn_net
    sp = config.parse_text(
        f'net_param {{ {bn_net} }} test_iter: 1 test_interval: 100 base_lr: 0.1 '
        'lr_policy: "fixed" max_iter: 3 test_initialization: false '
        f'snapshot_prefix: "{tmp_path}/snap" random_seed: 1', pb.SolverParameter())
    solver = Solver(sp)
    solver.step(3)
    train_stats = solver.net.params["bn"]
    test_stats = solver.test_nets[0].params["bn"]
    assert float(train_stats[2].data[0]) > 0  # the running statistics were accumulated
    for mine, theirs in zip(test_stats, train_stats, strict=True):
        assert np.shares_memory(mine.data, theirs.data)
    assert solver.test_nets[0].layer_dict["bn"].use_global_stats

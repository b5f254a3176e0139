"""Data layers fed by worker processes: the same batches as the thread, resume bit-exact,
sharding unchanged; `netforge train` reports a dead worker in one line and leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.data.process_prefetch import ProcessPrefetcher
from netforge.layers.data import DataLayer, ImageDataLayer
from tests.layers.test_data_layers import (
    SOLVER_NET,
    build,
    data_text,
    image_data_text,
    write_caffe_lmdb,
    write_image_list,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path):
    rng = np.random.default_rng(21)
    images = [rng.integers(0, 256, size=(3, 6, 8), dtype=np.uint8) for _ in range(7)]
    write_caffe_lmdb(tmp_path / "db", images, [3, 1, 4, 1, 5, 0, 2])
    return tmp_path / "db"


def batches_of(layer_cls, text, processes, monkeypatch, count=5, shard=None):
    monkeypatch.setenv("NETFORGE_DATA_PROCESSES", str(processes))
    layer, tops = build(layer_cls, text, seed=5)
    if shard is not None:
        layer.shard(*shard)
    out = []
    for _ in range(count):
        layer.forward([], tops)
        out.append([top.data.copy() for top in tops])
    kind = type(layer._prefetcher)
    layer.close()
    return out, kind


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("shard", [None, (1, 2)])
def test_data_batches_do_not_depend_on_the_worker_count(db, monkeypatch, shard):
    text = data_text(db, batch=3, transform="crop_size: 4 mirror: true mean_value: 3")
    thread, kind = batches_of(DataLayer, text, 0, monkeypatch, shard=shard)
    assert kind.__name__ == "Prefetcher"
    for processes in (1, 3):
        got, kind = batches_of(DataLayer, text, processes, monkeypatch, shard=shard)
        assert kind is ProcessPrefetcher
        assert_same(thread, got)


def test_image_data_batches_do_not_depend_on_the_worker_count(tmp_path, monkeypatch):
    write_image_list(tmp_path, [(6, 7)] * 5)
    text = image_data_text(tmp_path, extra="shuffle: true", transform="crop_size: 4 mirror: true")
    thread, _ = batches_of(ImageDataLayer, text, 0, monkeypatch, count=4)
    got, kind = batches_of(ImageDataLayer, text, 2, monkeypatch, count=4)
    assert kind is ProcessPrefetcher
    assert_same(thread, got)


def test_solver_resumed_with_workers_is_bit_exact(db, tmp_path, monkeypatch):
    """7 steps straight (the thread) == 4 steps (2 workers), snapshot, 3 more (1 worker)."""
    from netforge.train.solver import Solver

    def solver(processes):
        monkeypatch.setenv("NETFORGE_DATA_PROCESSES", str(processes))
        sp = config.parse_text(f'base_lr: 0.1 lr_policy: "fixed" max_iter: 10 random_seed: 3 '
                               f'snapshot_prefix: "{tmp_path}/snap"', pb.SolverParameter())
        sp.train_net_param.CopyFrom(config.parse_text(SOLVER_NET.replace("@SOURCE@", str(db)),
                                                      pb.NetParameter()))
        return Solver(sp)

    straight = solver(0)
    straight.step(7)
    first = solver(2)
    first.step(4)
    _, state = first.snapshot()
    first.close()
    resumed = solver(1)
    resumed.restore(state)
    resumed.step(3)
    assert isinstance(resumed.net.layer_dict["data"]._prefetcher, ProcessPrefetcher)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params, strict=True):
        np.testing.assert_array_equal(a.blob.data, b.blob.data)
    assert resumed.net.layer_dict["data"].get_state() == \
        straight.net.layer_dict["data"].get_state()
    straight.close()
    resumed.close()


# -- the command line ---------------------------------------------------------------------------
def write_solver(tmp_path, db, max_iter=100000, snapshot=0):
    net = tmp_path / "net.prototxt"
    net.write_text(SOLVER_NET.replace("@SOURCE@", str(db)))
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}" base_lr: 0.01 lr_policy: "fixed" max_iter: {max_iter} '
                      f'display: 0 snapshot: {snapshot} snapshot_prefix: "{tmp_path}/snap" '
                      'random_seed: 1')
    return solver


def worker_pids(parent: int, within: float = 60.0) -> list[int]:
    """Pids of the batch workers that process ``parent`` started (waits for one)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and \
                    b"netforge.data.batch_worker" in cmdline:
                pids.append(int(entry.name))
        if pids:
            return pids
        time.sleep(0.1)
    return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def all_gone(pids, within: float = 20.0) -> bool:
    """Whether every process in ``pids`` exits within ``within`` s (workers leave when
    their socket closes, which on a busy machine takes a moment)."""
    end = time.monotonic() + within
    while any(alive(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.05)
    return not any(alive(pid) for pid in pids)


def start_training(tmp_path, db, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NETFORGE_DATA_PROCESSES": "2"}
    return subprocess.Popen(
        [sys.executable, "-m", "netforge", "-q", "train", "--solver",
         str(write_solver(tmp_path, db, **kwargs))], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_train_reports_a_dead_worker_in_one_line(db, tmp_path):
    train = start_training(tmp_path, db)
    pids = worker_pids(train.pid)
    assert pids, "no batch worker started"
    os.kill(pids[0], signal.SIGKILL)
    _, err = train.communicate(timeout=60)
    assert train.returncode == 1  # a run that failed (SPEC §6)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('netforge: error: Data "data": data worker process ')
    assert "(killed by SIGKILL)" in lines[0]
    assert all_gone(pids)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_train_interrupted_stops_its_workers(db, tmp_path):
    train = start_training(tmp_path, db, snapshot=5)
    pids = worker_pids(train.pid)
    assert pids, "no batch worker started"
    # Ctrl-C only once the solver runs its loop (its first snapshot is written): before that
    # the net is still being built and an interrupt just ends the command.
    end = time.monotonic() + 60
    while not (tmp_path / "snap_iter_5.caffemodel").exists() and time.monotonic() < end:
        time.sleep(0.05)
    os.killpg(train.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
    train.communicate(timeout=60)
    assert train.returncode == 0  # Caffe's default: snapshot, then stop
    assert list(tmp_path.glob("snap_iter_*.solverstate"))
    assert all_gone(pids)

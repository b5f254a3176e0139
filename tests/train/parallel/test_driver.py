"""Data-parallel training: 2 MPI ranks on loopback against 1 process; dead and hung ranks;
signals on any rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from netforge.net import Net
from tests.train.parallel.helpers import MPIEXEC, ROOT, data_net, make_solver, needs_mpi, rank_env


# -- 2 ranks × 32 against 1 rank × 64 ------------------------------------------------------------
def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


# Caffe's own LeNet settings: examples/mnist/lenet_solver.prototxt (SGD, base_lr 0.01,
# momentum 0.9) and lenet_solver_adam.prototxt (Adam, base_lr 0.001, momentum 0.9,
# momentum2 0.999, delta 1e-8). See the comment in the test for why not larger rates.
RULES = ['type: "SGD" base_lr: 0.01 momentum: 0.9',
         'type: "Adam" base_lr: 0.001 momentum: 0.9 momentum2: 0.999 delta: 1e-8']


@needs_mpi
@pytest.mark.parametrize("rule", RULES)
def test_two_ranks_train_as_one_rank_with_twice_the_batch_and_resume(tmp_path, lmdb_db, rule):
    """The acceptance line: 2 ranks × 32 for 50 iterations against 1 rank × 64 on the same
    records, crops, mirrors and Dropout masks; straight and resumed at iteration 25."""
    single = make_solver(tmp_path / "single", lmdb_db, rule, 64, dropout=True)
    initial = [np.array(p.blob.data) for p in single.net.learnable_params]
    single.step(50)
    expected = [np.array(p.blob.data) for p in single.net.learnable_params]
    single.close()
    done = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m",
                           "tests.train.parallel.worker", str(tmp_path), str(lmdb_db), rule,
                           "64"], capture_output=True, text=True, env=rank_env(), timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    # Relative difference ≤ 1e-5 per parameter blob, not bit equality: the 1-rank GEMMs sum
    # the 64 samples' contributions to a weight gradient in one order, the ranks sum 32 each
    # and the all-reduce adds the two (the scalings, 1/64 against 1/32 then 1/2, are powers
    # of two and exact). The gradients then differ by float32 rounding, most in relative
    # terms in entries that are small by cancellation (measured at the first step: up to
    # 2e-5 relative in entries of |g| ~ 4e-4, 1e-7 in typical ones); Adam's step is lr-sized
    # whatever |g|, so it turns such an entry's relative error into lr × 2e-5 of weight.
    # How far training carries these differences depends on the rate: measured over 8 seeds
    # (tests' net with Dropout; the shuffled LMDB of conftest), at these settings the worst
    # blob differed by 4.7e-7 (SGD) and 3.2e-7 (Adam); at base_lr 0.05 (momentum 0.9, an
    # effective step of 0.5) by up to 2.2e-5 (SGD) and 5.5e-6 (Adam), always in the last
    # layer's bias, whose norm stays ~1e-2 because softmax gradients sum to zero over the
    # classes. A wrong reduction, averaging, data or mask shard differs by far more: every
    # blob moves by more than 1000 × the tolerance here (checked below).
    tolerance = 1e-5
    for k, (start, end) in enumerate(zip(initial, expected, strict=True)):
        assert _relative(end, start) > 1000 * tolerance, (k, _relative(end, start))
    for run in ("straight", "resumed"):
        got = np.load(tmp_path / f"{run}.npz")
        for k, want in enumerate(expected):
            have = got[f"arr_{k}"]
            assert _relative(want, have) <= tolerance, (run, k, _relative(want, have))
    # The resumed run continues the straight 2-rank run exactly.
    straight, resumed = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key])


# -- failures and signals through the command line ------------------------------------------------
def _solver_file(tmp_path, db) -> Path:
    net = tmp_path / "net.prototxt"
    net.write_text(data_net(db, 16))
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}" type: "SGD" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" '
                      f'display: 1 max_iter: 100000000 random_seed: 3 '
                      f'snapshot_prefix: "{tmp_path}/s"')
    return solver


def _rank_pid(marker: str, rank: int) -> int:
    """The pid of the process of ``rank`` started with NETFORGE_TEST_MARKER=marker."""
    wanted = {f"NETFORGE_TEST_MARKER={marker}".encode(), f"PMI_RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted <= environ and b"netforge" in cmdline and b"mpiexec" not in cmdline:
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank}")


class _Job:
    """A 2-rank ``netforge train`` under mpiexec whose output a thread keeps draining (a full
    pipe would block the ranks' writes, and with them their signal handlers)."""

    def __init__(self, tmp_path, db, **env):
        solver = _solver_file(tmp_path, db)
        self.marker = str(tmp_path)
        self.process = subprocess.Popen(
            [str(MPIEXEC), "-disable-auto-cleanup", "-prepend-rank", "-print-all-exitcodes",
             "-n", "2", sys.executable, "-m", "netforge", "train", "--solver", str(solver)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=rank_env(NETFORGE_TEST_MARKER=self.marker, **env), cwd=ROOT)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_for("Iteration 20,")

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, rank: int = 0, after: int = 0, timeout: float = 90) -> int:
        """Index of the first line of ``rank`` containing ``text`` (from line ``after``)."""
        deadline = time.monotonic() + timeout
        prefix = f"[{rank}] "
        while time.monotonic() < deadline:
            for k in range(after, len(self.lines)):
                if self.lines[k].startswith(prefix) and text in self.lines[k]:
                    return k
            if self.process.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} from rank {rank}:\n" + self.text()[-3000:])

    def pid(self, rank: int) -> int:
        return _rank_pid(self.marker, rank)

    def finish(self, timeout: float = 60) -> tuple[int, str, float]:
        began = time.monotonic()
        code = self.process.wait(timeout=timeout)
        took = time.monotonic() - began
        self.reader.join(timeout=30)
        return code, self.text(), took

    def text(self) -> str:
        return "\n".join(self.lines)


def _rank_lines(text: str, rank: int) -> list[str]:
    return [line[len(f"[{rank}] "):] for line in text.splitlines()
            if line.startswith(f"[{rank}] ")]


@needs_mpi
def test_killing_one_rank_stops_the_other_with_one_line(tmp_path, lmdb_db):
    job = _Job(tmp_path, lmdb_db)
    os.kill(job.pid(1), signal.SIGKILL)
    code, text, took = job.finish()
    assert code != 0 and took < 60
    errors = [line for line in _rank_lines(text, 0) if "error" in line.lower()]
    # The launcher's notice (SIGUSR1) or MPI's own error, whichever comes first: one line.
    assert len(errors) == 1, text[-3000:]
    assert errors[0].startswith("netforge: error: rank 0: another rank of the job failed ")
    assert "Traceback" not in text


def _exited(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in "ZX"
    except OSError:
        return True


@needs_mpi
def test_a_hung_rank_makes_the_other_stop_after_the_timeout(tmp_path, lmdb_db):
    job = _Job(tmp_path, lmdb_db, NETFORGE_RANK_TIMEOUT="3")
    survivor, hung = job.pid(0), job.pid(1)
    os.kill(hung, signal.SIGSTOP)  # alive but silent: a hang
    began = time.monotonic()
    while not _exited(survivor) and time.monotonic() - began < 60:
        time.sleep(0.2)
    took = time.monotonic() - began
    # MPI_Abort's SIGTERM waits until a stopped process runs again: end it here.
    os.kill(hung, signal.SIGKILL)
    code, text, _ = job.finish()
    assert took < 60 and code != 0
    errors = [line for line in _rank_lines(text, 0) if "error" in line.lower()]
    assert len(errors) == 1, text[-3000:]
    assert errors[0].startswith("netforge: error: rank 0: no answer from the other ranks for "
                                "3 s"), errors
    assert "Traceback" not in text


@needs_mpi
@pytest.mark.parametrize("target", ["rank 0", "mpiexec"])  # mpiexec forwards a terminal's ^C
def test_ctrl_c_stops_both_ranks_with_one_usable_snapshot(tmp_path, lmdb_db, target):
    job = _Job(tmp_path, lmdb_db)
    os.kill(job.pid(0) if target == "rank 0" else job.process.pid, signal.SIGINT)
    code, text, _ = job.finish()
    assert code == 0, text[-3000:]
    assert "Optimization stopped early." in "".join(_rank_lines(text, 0))
    states = list(tmp_path.glob("s_iter_*.solverstate"))
    models = list(tmp_path.glob("s_iter_*.caffemodel"))
    assert len(states) == 1 and len(models) == 1, sorted(p.name for p in tmp_path.iterdir())
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or p.name.startswith(".")]
    Net(str(tmp_path / "net.prototxt"), "train", weights=str(models[0]))
    stopped_at = int(states[0].name.split("_iter_")[1].split(".")[0])
    solver = make_solver(tmp_path / "resume", lmdb_db, 'type: "SGD" momentum: 0.9', 32)
    solver.restore(states[0])
    assert solver.iter == stopped_at
    solver.close()


@needs_mpi
def test_sighup_on_rank_1_makes_rank_0_snapshot_and_both_go_on(tmp_path, lmdb_db):
    job = _Job(tmp_path, lmdb_db)
    os.kill(job.pid(1), signal.SIGHUP)
    snapshot = job.wait_for("Snapshotting solver state")
    job.wait_for("loss = ", after=snapshot + 1)  # training goes on after the snapshot
    os.kill(job.process.pid, signal.SIGINT)
    code, text, _ = job.finish()
    assert code == 0, text[-3000:]
    assert not [line for line in _rank_lines(text, 1) if "Snapshotting" in line]
    assert len(list(tmp_path.glob("s_iter_*.solverstate"))) == 2  # SIGHUP's, then ^C's

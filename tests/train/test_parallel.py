"""Data-parallel training: 2 MPI ranks on loopback against 1 process, failures, signals.

The 2-process cases run under the mpiexec of the ``[mpi]`` extra (MPICH wheel), which the
``test`` extra installs; they are skipped only where mpi4py/mpiexec are missing.
"""

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
from PIL import Image

from netforge.data.convert import convert_images
from netforge.data.loaders import DatumLoader, Hdf5Loader, ImageListLoader
from netforge.data.transformer import Transformer
from netforge.errors import ConfigError, DeviceError
from netforge.net import Net
from netforge.train.parallel import collectives, launch
from tests.train.parallel_nets import data_net, make_solver

MPIEXEC = Path(sys.executable).with_name("mpiexec")
ROOT = Path(__file__).resolve().parents[2]
needs_mpi = pytest.mark.skipif(
    not MPIEXEC.exists() or subprocess.run([sys.executable, "-c", "import mpi4py"]).returncode,
    reason="the [mpi] extra (mpi4py + mpich) is not installed")


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "RANK"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def lmdb_db(tmp_path_factory):
    """150 random 10×10 gray images in 3 classes, shuffled into an LMDB."""
    root = tmp_path_factory.mktemp("parallel")
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        folder = root / "images" / label
        folder.mkdir(parents=True)
        for i in range(50):
            Image.fromarray(rng.integers(0, 256, size=(10, 10), dtype=np.uint8)).save(
                folder / f"{i}.png")
    convert_images(root / "images", root / "db", gray=True, seed=3)
    return root / "db"


# -- who am I: the launchers' variables --------------------------------------------------------
@pytest.mark.parametrize("env, expected", [
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
      "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, (1, 4, 1)),
    ({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0"}, (3, 4, 0)),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"},
     (5, 8, 1)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, (0, 1, 0)),  # a batch script, not a step
    ({"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}, (2, 3, 0)),
    ({}, (0, 1, 0)),
])
def test_rank_info_reads_each_launchers_variables(env, expected):
    info = launch.rank_info(env)
    assert (info.rank, info.world, info.local_rank) == expected


def test_rank_info_refuses_a_rank_outside_the_world():
    with pytest.raises(ConfigError, match="rank 4 does not fit a world of 4"):
        launch.rank_info({"RANK": "4", "WORLD_SIZE": "4"})


def test_gpu_lists():
    assert launch.gpu_list("all", 3) == [0, 1, 2]
    assert launch.gpu_list("2,0", 3) == [2, 0]
    with pytest.raises(DeviceError, match="device 5 does not exist"):
        launch.gpu_list("0,5", 2)
    with pytest.raises(ConfigError, match="names a device twice"):
        launch.gpu_list("1,1", 2)


def test_train_with_several_gpus_refuses_clearly_without_a_gpu(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "x.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    done = subprocess.run([sys.executable, "-m", "netforge", "train", "--solver", str(solver),
                           "--gpu", "0,1"], capture_output=True, text=True, env=_env(),
                          timeout=60)
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        pytest.skip("a GPU is usable here")
    except Exception:
        pass
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netforge: error: --gpu 0,1: ")
    assert "GPU" in lines[0]


# -- rank r reads records r, r+N, ... ------------------------------------------------------------
def _rows(loader, index):
    out = loader.allocate()
    loader.load_batch(index, out)
    return out


def _check_shards(make, world=3, batch=4, keys=("data", "label")):
    whole = make(batch * world)
    shards = [make(batch) for _ in range(world)]
    for rank, shard in enumerate(shards):
        shard.shard(rank, world)
    for index in (0, 1, 7):  # 7: past the end of the data, wrapped around
        expected = _rows(whole, index)
        for rank, shard in enumerate(shards):
            got = _rows(shard, index)
            for key in keys:
                np.testing.assert_array_equal(got[key], expected[key][rank::world])
    state = shards[1].state(3)
    assert state == whole.state(3)  # one stream position for every rank and for 1 rank
    for loader in [whole, *shards]:
        loader.close()


def test_datum_loader_shards_records_and_random_crops(lmdb_db):
    transformer = Transformer(scale=1 / 256, crop_size=8, mirror=True, train=True)
    _check_shards(lambda n: DatumLoader(lmdb_db, n, transformer, seed=11, dtype=np.float32,
                                        label="Data"))


def test_image_list_loader_shards_a_shuffled_list(tmp_path):
    rng = np.random.default_rng(1)
    entries = []
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, size=(6, 6), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
        entries.append((f"{i}.png", i % 3))
    transformer = Transformer(crop_size=4, mirror=True, train=True)
    _check_shards(lambda n: ImageListLoader(entries, tmp_path, n, transformer, seed=4,
                                            dtype=np.float32, label="ImageData",
                                            list_path="list.txt", color=False, shuffle=True))


def test_hdf5_loader_shards_rows_across_files(tmp_path):
    import h5py

    rng = np.random.default_rng(2)
    files = []
    for k, rows in enumerate((5, 9)):
        path = tmp_path / f"{k}.h5"
        with h5py.File(path, "w") as handle:
            handle["data"] = rng.normal(size=(rows, 2, 3)).astype(np.float32)
            handle["label"] = np.arange(rows, dtype=np.float32) + 100 * k
        files.append(str(path))
    _check_shards(lambda n: Hdf5Loader(files, ["data", "label"], n, seed=8, dtype=np.float32,
                                       label="HDF5Data", shuffle=True))


# -- one flat buffer, buckets started as backward finishes their layers ----------------------------
class _RecordingComm:
    """A stand-in for MpiComm: 2 "ranks" holding the same gradient; records when each
    bucket's all-reduce starts (the number of layers backward still had to do)."""

    world = 2
    wait_seconds = 0.0

    def __init__(self):
        self.started = []
        self.net = None

    def start_allreduce(self, buffer):
        self.started.append((self.remaining(), buffer.size))
        buffer *= 2  # the sum over two ranks with equal gradients
        return None

    def remaining(self):
        return sum(1 for step in self.net.plan.steps
                   if step.need_backward and not getattr(step.layer, "backward_done", 0))

    def progress(self, requests):
        pass

    def wait(self, requests, what):
        pass


def test_gradient_buckets_overlap_backward_and_average(lmdb_db, monkeypatch):
    net = Net(_net_param(lmdb_db), "train", seed=3)
    reference = Net(_net_param(lmdb_db), "train", seed=3)
    comm = _RecordingComm()
    comm.net = net
    for layer in net.layers:
        original = layer.backward

        def marked(tops, propagate, bottoms, layer=layer, original=original):
            original(tops, propagate, bottoms)
            layer.backward_done = 1

        monkeypatch.setattr(layer, "backward", marked)
    buckets = collectives.GradientBuckets(net, comm, bucket_bytes=64)
    net.clear_param_diffs()
    net.forward_range(0, len(net.layers) - 1)
    buckets.reduce_during_backward(net)
    reference.clear_param_diffs()
    reference.forward_backward()
    for mine, theirs in zip(net.learnable_params, reference.learnable_params, strict=True):
        np.testing.assert_allclose(mine.blob.diff, theirs.blob.diff, rtol=1e-6)
        assert np.shares_memory(mine.blob.diff, buckets.flat)
    assert sum(size for _, size in comm.started) == buckets.flat.size
    # The last layer's parameters go first, while backward still has the others to do.
    assert comm.started[0][0] > 0 and comm.started[-1][0] == 0


def _net_param(db):
    from netforge import config
    from netforge import netforge_pb2 as pb

    return config.parse_text(data_net(db, 8), pb.NetParameter())


# -- 2 ranks × 32 against 1 rank × 64 ------------------------------------------------------------
def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


@needs_mpi
@pytest.mark.parametrize("rule", ['type: "SGD" momentum: 0.9', 'type: "Adam" momentum: 0.9'])
def test_two_ranks_train_as_one_rank_with_twice_the_batch_and_resume(tmp_path, lmdb_db, rule):
    single = make_solver(tmp_path / "single", lmdb_db, rule, 64)
    single.step(50)
    expected = [np.array(p.blob.data) for p in single.net.learnable_params]
    single.close()
    done = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m",
                           "tests.train.parallel_worker", str(tmp_path), str(lmdb_db), rule,
                           "64"], capture_output=True, text=True, env=_env(), timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    for run in ("straight", "resumed"):
        got = np.load(tmp_path / f"{run}.npz")
        for k, want in enumerate(expected):
            have = got[f"arr_{k}"]
            assert _relative(want, have) <= 1e-5, (run, k, _relative(want, have))
    # Not bit-equal: the 1-rank GEMM sums 64 rows in one order, the ranks 2 × 32 then add.
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
            env=_env(NETFORGE_TEST_MARKER=self.marker, **env), cwd=ROOT)
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

# -- BatchNorm statistics: per rank, or averaged ------------------------------------------------
class _OtherRankAddsTwo(_RecordingComm):
    """The other rank holds this rank's values + 2, so the average is ours + 1."""

    def start_allreduce(self, buffer):
        buffer[...] = buffer + (buffer + 2)
        return None


@pytest.mark.parametrize("sync", [False, True])
def test_batchnorm_statistics_stay_per_rank_or_are_averaged(sync):
    from netforge import config
    from netforge import netforge_pb2 as pb
    from netforge.train.parallel.driver import DataParallel

    net = Net(config.parse_text("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }
        layer { name: "ip" type: "InnerProduct" bottom: "y" top: "z"
                inner_product_param { num_output: 2 } }
        """, pb.NetParameter()), "train", seed=1)
    for blob in net.layer_dict["bn"].blobs:
        blob.data[...] = np.arange(blob.count, dtype=np.float32).reshape(blob.shape) + 5
    before = [np.array(b.data) for b in net.layer_dict["bn"].blobs]
    weights = np.array(net.params["ip"][0].data)
    comm = _OtherRankAddsTwo()
    comm.rank = 0
    job = DataParallel(comm, sync_batchnorm=sync)
    job.after_update(net)
    for old, blob in zip(before, net.layer_dict["bn"].blobs, strict=True):
        np.testing.assert_array_equal(blob.data, old + 1 if sync else old)
    np.testing.assert_array_equal(net.params["ip"][0].data, weights)  # only BatchNorm's

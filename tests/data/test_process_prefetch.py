"""ProcessPrefetcher: worker processes fill shared-memory slots with exactly the batches the
thread would; errors and dead workers are reported, never hung on; no segment is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from netforge.data.loaders import DatumLoader
from netforge.data.prefetch import Prefetcher
from netforge.data.process_prefetch import ProcessPrefetcher, stop_idle_workers
from netforge.data.transformer import Transformer
from netforge.errors import DataError, RunError
from tests.layers.test_data_layers import write_caffe_lmdb

SHM = Path("/dev/shm")
needs_dev_shm = pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this system")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path):
    """Five 3×6×8 images written as Caffe's wire bytes (an independent encoder)."""
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, size=(3, 6, 8), dtype=np.uint8) for _ in range(5)]
    labels = [3, 1, 4, 1, 5]
    write_caffe_lmdb(tmp_path / "db", images, labels)
    return tmp_path / "db", images, labels


def loader(path, *, crop=0, mirror=False, batch=2, seed=7):
    transformer = Transformer(scale=0.5, crop_size=crop, mirror=mirror, train=True)
    return DatumLoader(path, batch, transformer, seed=seed, dtype=np.float32, label="Data test")


def take(prefetcher, count):
    return [{key: value.copy() for key, value in prefetcher.next().items()}
            for _ in range(count)]


def shm_names() -> set[str]:
    return {entry.name for entry in SHM.iterdir()}


def shared_mappings(pid: int) -> set[str]:
    """What the process maps from shared memory: memfd files and /dev/shm entries."""
    with open(f"/proc/{pid}/maps") as handle:
        paths = {line.split(None, 5)[-1].strip() for line in handle if len(line.split()) > 5}
    return {p for p in paths if "memfd:" in p or p.startswith("/dev/shm")}


def gone(pid: int, within: float = 20.0) -> bool:
    """Whether process ``pid`` has exited (or is a zombie) within ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("workers", [1, 3])
def test_batches_are_the_records_in_key_order(db, workers):
    path, images, labels = db
    source = loader(path)
    with ProcessPrefetcher(source, depth=2, workers=workers) as p:
        batches = take(p, 6)
    source.close()
    for k, batch in enumerate(batches):  # batch k holds records 2k, 2k+1 (mod 5)
        rows = [(2 * k + i) % 5 for i in range(2)]
        np.testing.assert_array_equal(batch["data"], np.stack([images[r] for r in rows]) * 0.5)
        np.testing.assert_array_equal(batch["label"], [labels[r] for r in rows])


@pytest.mark.parametrize("workers,start", [(1, 0), (2, 0), (3, 4)])
def test_same_batches_as_the_thread_with_random_crops(db, workers, start):
    path, _, _ = db
    source = loader(path, crop=4, mirror=True, batch=3)
    with Prefetcher(source.load_batch, 2, allocate=source.allocate) as thread:
        expected = take(thread, 9)
    with ProcessPrefetcher(source, depth=3, workers=workers, start=start) as p:
        got = take(p, 9 - start)
        assert p.last_index == 8
    source.close()
    for a, b in zip(expected[start:], got, strict=True):
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_a_sharded_and_resumed_loader_keeps_its_rows(db):
    """Rank 1 of 2 reads records 1, 3, 5, ... of the global stream, in the workers too."""
    path, images, _ = db
    source = loader(path, batch=2)
    source.shard(1, 2)
    source.restore({"position": 4, "batch_index": 1, "seed": 7})
    with ProcessPrefetcher(source, depth=2, workers=2, start=1) as p:
        batches = take(p, 3)
    source.close()
    for k, batch in zip(range(1, 4), batches, strict=True):
        rows = [(4 + (k - 1) * 4 + 2 * i + 1) % 5 for i in range(2)]
        np.testing.assert_array_equal(batch["data"], np.stack([images[r] for r in rows]) * 0.5)


def test_a_loading_error_is_reraised_in_the_consumer(tmp_path):
    import lmdb

    write_caffe_lmdb(tmp_path / "db", [np.zeros((1, 2, 2), np.uint8)] * 3, [0, 1, 2])
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"00000002_class/img_2.jpg", b"\xff\xff not a datum")
    env.close()
    source = loader(tmp_path / "db", batch=1)
    with ProcessPrefetcher(source, depth=1, workers=2) as p:
        p.next()
        p.next()
        with pytest.raises(DataError, match="not a valid Datum"):
            p.next()
        with pytest.raises(DataError, match="not a valid Datum"):
            p.next()
    source.close()


def test_a_loader_that_cannot_start_is_reported_and_the_workers_stay_usable(db, tmp_path):
    import shutil

    path, images, _ = db
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    doomed = loader(copy)  # opened here; the workers reopen it from its path, now gone
    doomed.close()
    shutil.rmtree(copy)
    with pytest.raises(DataError, match="does not exist"):
        ProcessPrefetcher(doomed, depth=2, workers=2)
    good = loader(path)
    with ProcessPrefetcher(good, depth=2, workers=2) as p:
        batch = p.next()
        np.testing.assert_array_equal(batch["data"], np.stack(images[:2]) * 0.5)
    good.close()


@needs_dev_shm
def test_a_dead_worker_is_one_clear_error_and_no_segment_is_left(db):
    path, _, _ = db
    source = loader(path)
    before = shm_names()
    p = ProcessPrefetcher(source, depth=2, workers=2)
    p.next()
    # The slots are one anonymous memfd shared by descriptor: nothing named to leak.
    assert "/memfd:netforge-batches (deleted)" in shared_mappings(os.getpid())
    for pid in p.worker_pids:
        assert shared_mappings(pid) == {"/memfd:netforge-batches (deleted)"}
    assert not {n for n in shm_names() - before if "psm_" in n or "netforge" in n}
    os.kill(p.worker_pids[1], signal.SIGKILL)  # it owns the odd batches
    # Batches it finished before dying still arrive; the first one it owed fails.
    with pytest.raises(RunError, match=r"data worker process 1 \(pid \d+\) died while "
                                       r"loading batch [135] \(killed by SIGKILL\)") as info:
        for _ in range(6):
            p.next()
    assert info.value.exit_code == 1
    with pytest.raises(RunError, match="died"):  # it stays failed
        p.next()
    p.close()
    assert gone(p.worker_pids[1])
    stop_idle_workers()  # the survivor went back to the idle pool
    assert gone(p.worker_pids[0])
    source.close()


def test_closed_workers_serve_the_next_prefetcher_then_stop(db):
    path, images, _ = db
    first = loader(path, crop=4, mirror=True, batch=3)
    p = ProcessPrefetcher(first, depth=3, workers=2)
    p.next()  # the workers now have batches 1..3 loaded or loading: close must drain them
    pids = p.worker_pids
    p.close()
    p.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        p.next()
    second = loader(path, batch=2)  # another geometry, another loader: same processes
    with ProcessPrefetcher(second, depth=2, workers=2) as q:
        assert sorted(q.worker_pids) == sorted(pids)
        batches = take(q, 3)
    for k, batch in enumerate(batches):
        rows = [(2 * k + i) % 5 for i in range(2)]
        np.testing.assert_array_equal(batch["data"], np.stack([images[r] for r in rows]) * 0.5)
    stop_idle_workers()
    assert all(gone(pid, 5.0) for pid in pids)
    first.close()
    second.close()


CHILD = """
import os, signal, sys, time
import numpy as np
from netforge.data.loaders import DatumLoader
from netforge.data.process_prefetch import ProcessPrefetcher, stop_idle_workers
from netforge.data.transformer import Transformer

source = DatumLoader(sys.argv[1], 2, Transformer(), seed=1, dtype=np.float32, label="Data x")
p = ProcessPrefetcher(source, depth=2, workers=2)
p.next()
print(*p.worker_pids, flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
elif sys.argv[2] == "crash":
    raise SystemExit(3)  # no close(): atexit and the workers' pipes must clean up
else:
    while True:  # Ctrl-C: the group gets SIGINT, the workers ignore it, we exit
        time.sleep(0.05)
        p.next()
"""


@needs_dev_shm
@pytest.mark.parametrize("how", ["kill", "crash", "interrupt"])
def test_nothing_is_left_when_the_training_process_dies(db, tmp_path, how):
    path, _, _ = db
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(script), str(path), how], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    before = shm_names()
    pids = child.stdout.readline().split()
    assert pids, child.stderr.read()
    if how == "interrupt":
        os.killpg(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    child.wait(30)
    assert child.returncode != 0
    assert all(gone(int(pid)) for pid in pids), "a worker outlived the training process"
    assert not {n for n in shm_names() - before if "psm_" in n or "netforge" in n}
    if how == "interrupt":
        assert "KeyboardInterrupt" in child.stderr.read()

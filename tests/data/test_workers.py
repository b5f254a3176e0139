"""RowPool: every row once, exceptions re-raised, worker count from the environment."""

from __future__ import annotations

import threading

import pytest

from netforge.data.workers import RowPool, default_workers


@pytest.mark.parametrize("workers,rows", [(1, 5), (3, 7), (4, 2), (3, 0)])
def test_every_row_runs_once(workers, rows):
    seen, lock = [], threading.Lock()

    def row(i):
        with lock:
            seen.append(i)

    pool = RowPool(workers)
    pool.run(row, rows)
    pool.close()
    assert sorted(seen) == list(range(rows))


def test_errors_are_reraised():
    def row(i):
        if i == 5:
            raise ValueError("row 5")

    pool = RowPool(3)
    with pytest.raises(ValueError, match="row 5"):
        pool.run(row, 9)
    pool.close()


def test_default_workers_from_environment(monkeypatch):
    monkeypatch.setenv("NETFORGE_DATA_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("NETFORGE_DATA_WORKERS", "0")
    assert default_workers() == 1
    monkeypatch.delenv("NETFORGE_DATA_WORKERS")
    assert 1 <= default_workers() <= 4

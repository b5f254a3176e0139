"""Prefetcher: deterministic batches, reused buffers, errors re-raised, clean close."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from netforge.data.prefetch import Prefetcher


def make_loader(seed: int, jitter: bool):
    timing = np.random.default_rng()  # deliberately unseeded: thread timing must not matter

    def load(index, out):
        rng = np.random.default_rng([seed, index])
        if jitter:
            time.sleep(float(timing.uniform(0, 0.003)))
        out["data"][...] = rng.normal(size=out["data"].shape)
        out["label"][...] = index

    return load


def allocate():
    return {"data": np.empty((4, 3), np.float32), "label": np.empty((4,), np.float32)}


def collect(prefetcher, n):
    batches = []
    for _ in range(n):
        batch = prefetcher.next()
        batches.append({k: v.copy() for k, v in batch.items()})
    return batches


def test_batches_depend_only_on_seed_and_index():
    with Prefetcher(make_loader(5, True), 3, allocate=allocate) as a:
        first = collect(a, 10)
    with Prefetcher(make_loader(5, False), 1, allocate=allocate) as b:
        second = collect(b, 10)
    with Prefetcher(make_loader(5, True), 2, allocate=allocate, start=4) as c:
        resumed = collect(c, 6)
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x["data"], y["data"])
    assert [int(b["label"][0]) for b in first] == list(range(10))
    for x, y in zip(first[4:], resumed, strict=True):
        np.testing.assert_array_equal(x["data"], y["data"])


def test_buffers_are_reused():
    made = []

    def counting_allocate():
        made.append(allocate())
        return made[-1]

    with Prefetcher(make_loader(0, False), 3, allocate=counting_allocate) as p:
        ids = {id(p.next()["data"]) for _ in range(12)}
    assert len(made) == 3
    assert ids <= {id(buffers["data"]) for buffers in made}


def test_returning_loader_is_copied_into_reused_buffers():
    def load(index):
        return {"x": np.full((2, 2), index, np.int64)}

    with Prefetcher(load, 2) as p:
        seen = []
        for k in range(5):
            batch = p.next()
            assert batch["x"][0, 0] == k
            seen.append(id(batch["x"]))
    assert len(set(seen)) <= 2


def test_errors_are_reraised_in_the_consumer():
    def load(index, out):
        if index == 2:
            raise ValueError("record 2 is broken")
        out["data"][...] = index

    with Prefetcher(load, 2, allocate=allocate) as p:
        p.next()
        p.next()
        with pytest.raises(ValueError, match="record 2 is broken"):
            p.next()
        with pytest.raises(ValueError, match="record 2 is broken"):
            p.next()


def test_close_stops_the_thread():
    before = threading.active_count()
    p = Prefetcher(make_loader(1, False), 2, allocate=allocate)
    p.next()  # the thread now waits for a free buffer
    thread = p._thread
    p.close()
    assert not thread.is_alive()
    assert threading.active_count() == before
    p.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        p.next()

"""The metrics file's seconds column against a clock the test controls (never wall time)."""

from __future__ import annotations

from netforge.train.metrics import MetricsWriter, read_metrics


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_seconds_count_from_the_writer_start(tmp_path):
    clock = FakeClock(100.0)
    writer = MetricsWriter(tmp_path / "m.jsonl", clock=clock)
    clock.now = 102.5
    writer.write({"phase": "train", "iteration": 0, "outputs": {"loss": 1.0}})
    clock.now = 110.25
    writer.write({"phase": "train", "iteration": 2, "outputs": {"loss": 0.5}})
    writer.close()
    assert [r["seconds"] for r in read_metrics(tmp_path / "m.jsonl")] == [2.5, 10.25]


def test_seconds_continue_across_resume_and_later_records_are_dropped(tmp_path):
    path = tmp_path / "m.jsonl"
    clock = FakeClock(0.0)
    first = MetricsWriter(path, clock=clock)
    for iteration, now in [(0, 1000.0), (2, 3600.0), (4, 5000.0)]:
        clock.now = now
        first.write({"phase": "train", "iteration": iteration, "outputs": {}})
    first.close()
    # resumed from the iteration-2 snapshot: records from 2 on go, the clock goes on from the
    # last kept record (1000 s), not from zero
    clock = FakeClock(50.0)
    resumed = MetricsWriter(path, resume_iteration=2, clock=clock)
    clock.now = 57.0
    resumed.write({"phase": "train", "iteration": 2, "outputs": {}})
    resumed.close()
    records = read_metrics(path)
    assert [(r["iteration"], r["seconds"]) for r in records] == [(0, 1000.0), (2, 1007.0)]

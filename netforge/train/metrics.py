"""The metrics file: one JSON object a line, beside the snapshots (``<prefix>_metrics.jsonl``).

Train records (at each display): ``{"phase": "train", "iteration", "lr", "loss", "outputs":
{name: value}, "seconds"}``; test records (after each test pass): ``{"phase": "test",
"iteration", "net": i, "outputs": {...}, "seconds"}``. ``seconds`` counts training wall time,
continued across resumes (a resumed run starts from the last kept record's seconds). Each
line is flushed as it is written, so a crash loses nothing already reported. A snapshot
taken at iteration N precedes iteration N's test and display, so a run resumed from it first
drops the records of iterations ≥ N, then appends its own: the file tells one consistent
story.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from netforge.errors import RunError
from netforge.files import atomic_write_bytes


def metrics_path(prefix: Path) -> Path:
    return Path(f"{prefix}_metrics.jsonl")


def _clean(value):
    """JSON has no NaN/Inf: write them as strings rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class MetricsWriter:
    """Appends records to the metrics file; ``clock`` (seconds, monotonic) is passed in so
    that the seconds column can be checked against a clock the caller controls."""

    def __init__(self, path: Path, resume_iteration: int | None = None,
                 clock=time.perf_counter):
        self.path = Path(path)
        self.clock = clock
        self.start = clock()
        kept = []
        if resume_iteration is not None:
            kept = [line for line in _read_lines(self.path)
                    if json.loads(line).get("iteration", 0) < resume_iteration]
        # A resumed run's clock goes on from where the kept records stopped, so the seconds
        # column stays the training time so far (plots against time have no jump back).
        self.seconds_before = float(json.loads(kept[-1]).get("seconds", 0.0)) if kept else 0.0
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())
        try:
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise RunError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def write(self, record: dict) -> None:
        elapsed = self.seconds_before + self.clock() - self.start
        record = {**record, "seconds": round(elapsed, 3)}
        if "outputs" in record:
            record["outputs"] = {k: _clean(v) for k, v in record["outputs"].items()}
        for key in ("lr", "loss"):
            if key in record:
                record[key] = _clean(float(record[key]))
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        lines.append(line)
    return lines


def read_metrics(path) -> list[dict]:
    """All complete records of a metrics file."""
    return [json.loads(line) for line in _read_lines(Path(path))]

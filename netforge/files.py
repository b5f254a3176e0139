"""Writing files so that a crash never leaves a truncated file under the final name."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from netforge.errors import RunError


def resolve_file(path, *base_dirs) -> Path:
    """``path`` as given if it exists (Caffe resolves against the working directory), else
    beside one of ``base_dirs`` (so a config folder can be used from anywhere)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    for base in base_dirs:
        if (Path(base) / candidate).exists():
            return Path(base) / candidate
    return candidate


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Any OS failure (no such folder, no permission, disk full) becomes a ``RunError`` naming
    ``path``, so the CLI reports one line instead of a traceback."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as handle:  # flush to disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def is_text_file(path, sample: int = 65536) -> bool:
    """Whether ``path`` reads as UTF-8 text (a prototxt may; weights, states and frozen
    models never do). Only the first ``sample`` bytes are looked at."""
    data = Path(path).read_bytes()[:sample]
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3  # only a character cut at the end of the sample
    return True

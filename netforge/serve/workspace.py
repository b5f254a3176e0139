"""The workspace: the one folder the server reads from and writes to.

Every path a user gives is relative to it; ``..``, absolute paths and symbolic links that
lead outside are refused, so the server can only ever serve or convert what lies inside.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from netforge.errors import ConfigError

DEFAULT_MAX_UPLOAD_BYTES = 32 << 20  # one request body; a few images or a prototxt


class PathRefused(ConfigError):
    """A user-given path that would leave the workspace."""


class Workspace:
    """``root`` and its fixed layout: datasets/, jobs/, uploads/ and serve.sqlite."""

    def __init__(self, root, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_upload_bytes = int(max_upload_bytes)
        for sub in ("datasets", "jobs", "uploads"):
            (self.root / sub).mkdir(exist_ok=True)

    @property
    def database(self) -> Path:
        return self.root / "serve.sqlite"

    def dataset_dir(self, dataset_id: int) -> Path:
        return self.root / "datasets" / str(int(dataset_id))

    def job_dir(self, job_id: int) -> Path:
        return self.root / "jobs" / str(int(job_id))

    def resolve(self, user_path: str, *, must_exist: bool = True) -> Path:
        """The real path of ``user_path`` (relative to the workspace), or PathRefused."""
        text = str(user_path or "").strip()
        if not text:
            raise PathRefused("empty path: give a folder relative to the workspace")
        if "\x00" in text:
            raise PathRefused("a path may not contain a NUL character")
        pure = PurePosixPath(text.replace("\\", "/"))
        if pure.is_absolute() or os.path.isabs(text):
            raise PathRefused(f'"{text}" is absolute; give a path relative to the workspace')
        if ".." in pure.parts:
            raise PathRefused(f'"{text}" contains ".."; paths must stay inside the workspace')
        candidate = self.root.joinpath(*pure.parts)
        real = candidate.resolve()
        if not real.is_relative_to(self.root):
            raise PathRefused(f'"{text}" leads outside the workspace (a symbolic link?)')
        if must_exist and not real.exists():
            raise PathRefused(f'"{text}" does not exist in the workspace')
        return real

    def check_tree(self, folder: Path) -> None:
        """Refuse a folder holding a symbolic link that leads outside the workspace."""
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                entry = Path(dirpath) / name
                if entry.is_symlink() and not entry.resolve().is_relative_to(self.root):
                    rel = entry.relative_to(self.root)
                    raise PathRefused(f'"{rel}" is a symbolic link leading outside the workspace')

    def child(self, folder: Path, name: str) -> Path:
        """A plain file name inside ``folder`` (no separators, no dot names)."""
        if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
            raise PathRefused(f'"{name}" is not a plain file name')
        path = folder / name
        if not path.resolve().is_relative_to(self.root):
            raise PathRefused(f'"{name}" leads outside the workspace')
        return path

    def folders(self, user_path: str = ".") -> list[str]:
        """Sub-folders of a workspace folder (relative paths), for choosing a source."""
        base = self.resolve(user_path) if user_path not in ("", ".") else self.root
        found = []
        for entry in sorted(base.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                rel = entry.relative_to(self.root).as_posix()
                if rel.split("/")[0] not in ("datasets", "jobs", "uploads"):
                    found.append(rel)
        return found

"""Datasets and jobs in SQLite (``serve.sqlite`` in the workspace), so they outlive the server.

One short-lived connection per call keeps it safe to use from the server's threads; rows are
returned as plain dicts with the JSON columns decoded.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from netforge.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,          -- converting, done, error
    options TEXT NOT NULL,        -- JSON: source and netforge.data.convert options
    info TEXT NOT NULL DEFAULT '{}',  -- JSON: counts, labels, shape (when done)
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    dataset_id INTEGER NOT NULL,
    state TEXT NOT NULL,          -- running, done, stopped, interrupted, error
    options TEXT NOT NULL,        -- JSON: network and solver settings
    pid INTEGER,
    returncode INTEGER,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
"""

JSON_COLUMNS = ("options", "info")


class NotFound(ConfigError):
    """No dataset or job of that id (answered 404)."""


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        with closing(self._connect()) as db, db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def _row(row) -> dict | None:
        if row is None:
            return None
        out = dict(row)
        for key in JSON_COLUMNS:
            if key in out:
                out[key] = json.loads(out[key])
        return out

    def insert(self, table: str, **values) -> int:
        values = {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in values.items()}
        now = time.time()
        values.setdefault("created", now)
        if table == "jobs":
            values.setdefault("updated", now)
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with closing(self._connect()) as db, db:
            cursor = db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})",
                                tuple(values.values()))
            return int(cursor.lastrowid)

    def update(self, table: str, row_id: int, **values) -> None:
        values = {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in values.items()}
        if table == "jobs":
            values["updated"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in values)
        with closing(self._connect()) as db, db:
            db.execute(f"UPDATE {table} SET {assignments} WHERE id = ?",
                       (*values.values(), int(row_id)))

    def get(self, table: str, row_id: int) -> dict | None:
        with closing(self._connect()) as db:
            return self._row(db.execute(f"SELECT * FROM {table} WHERE id = ?",
                                        (int(row_id),)).fetchone())

    def all(self, table: str, **where) -> list[dict]:
        clause = " AND ".join(f"{k} = ?" for k in where)
        sql = f"SELECT * FROM {table}" + (f" WHERE {clause}" if clause else "") + " ORDER BY id"
        with closing(self._connect()) as db:
            return [self._row(r) for r in db.execute(sql, tuple(where.values())).fetchall()]

    def delete(self, table: str, row_id: int) -> None:
        with closing(self._connect()) as db, db:
            db.execute(f"DELETE FROM {table} WHERE id = ?", (int(row_id),))

"""The SQLite index of the model store: versions, aliases and version counters.

The index is the store's source of truth for what exists: a version is
visible once its row is committed, never before. It runs in WAL mode so
readers never block the single writer (the store serialises writers with a
file lock) and every connection waits on a busy timeout instead of failing
with "database is locked".
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

from workbench.model_records import ModelRecord

LATEST = "latest"
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, task TEXT NOT NULL, created TEXT NOT NULL,
    sha256 TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (name, alias));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL);
"""


class ModelIndex:
    """Queries and transactions on ``index.sqlite``.

    Args:
        path: the SQLite file; created with its tables when missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._connection() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # Autocommit mode, so transactions are exactly the BEGIN ... COMMIT blocks below.
        with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)) as conn:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            yield conn

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        # DEFERRED gives readers one consistent snapshot; IMMEDIATE takes the write lock up front.
        with self._connection() as conn:
            conn.execute(f"BEGIN {mode}")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _aliases(conn: sqlite3.Connection, name: str) -> dict[str, int]:
        return dict(conn.execute("SELECT alias, version FROM aliases WHERE name = ?", (name,)).fetchall())

    @classmethod
    def _to_record(cls, conn: sqlite3.Connection, record_json: str) -> ModelRecord:
        record = ModelRecord.from_dict(json.loads(record_json))
        record.aliases = sorted(a for a, v in cls._aliases(conn, record.name).items() if v == record.version)
        return record

    # ----------------------------------------------------------------- reads
    def names(self) -> list[str]:
        """Stored model names, sorted."""
        with self._connection() as conn:
            return [row[0] for row in conn.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def versions(self, name: str) -> list[int]:
        """Indexed version numbers of ``name``, ascending."""
        with self._connection() as conn:
            rows = conn.execute("SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))
            return [row[0] for row in rows]

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version number for ``name``."""
        with self._connection() as conn:
            return self._aliases(conn, name)

    def record(self, name: str, version: int | str) -> ModelRecord | None:
        """The record at a version number or alias, with its current aliases; None when absent."""
        with self._transaction("DEFERRED") as conn:
            number = self._aliases(conn, name).get(version) if isinstance(version, str) else version
            row = conn.execute(
                "SELECT record FROM versions WHERE name = ? AND version = ?", (name, number)
            ).fetchone()
            return self._to_record(conn, row[0]) if row else None

    def records(self, name: str | None = None) -> list[ModelRecord]:
        """Every record (of ``name`` when given), sorted by name then version."""
        query, args = "SELECT record FROM versions ORDER BY name, version", ()
        if name is not None:
            query, args = "SELECT record FROM versions WHERE name = ? ORDER BY version", (name,)
        with self._transaction("DEFERRED") as conn:
            return [self._to_record(conn, row[0]) for row in conn.execute(query, args).fetchall()]

    def last_version(self, name: str) -> int:
        """The highest number ever given to ``name`` (removed versions included), 0 if none."""
        with self._connection() as conn:
            (indexed,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM versions WHERE name = ?", (name,)
            ).fetchone()
            counter = conn.execute("SELECT last_version FROM counters WHERE name = ?", (name,)).fetchone()
            return max(indexed, counter[0] if counter else 0)

    # ----------------------------------------------------------------- writes
    def add(self, record: ModelRecord) -> None:
        """Commit a new version row, its counter and its aliases (``latest`` among them) at once."""
        row = {k: v for k, v in record.to_dict().items() if k != "aliases"}
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                (record.name, record.version, record.task, record.created, record.sha256,
                 json.dumps(row, sort_keys=True)),
            )
            conn.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (record.name, record.version))
            for alias in record.aliases:
                conn.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", (record.name, alias, record.version))

    def reserve_version(self, name: str, version: int) -> None:
        """Keep ``version`` of ``name`` from ever being given again (an orphan folder of that number was removed)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT last_version FROM counters WHERE name = ?", (name,)).fetchone()
            if row is None or row[0] < version:
                conn.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (name, version))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` of ``name``."""
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", (name, alias, version))

    def delete(self, name: str, versions: list[int]) -> None:
        """Remove versions and their aliases; ``latest`` moves to the newest remaining version."""
        marks = ",".join("?" * len(versions))
        with self._transaction() as conn:
            conn.execute(f"DELETE FROM versions WHERE name = ? AND version IN ({marks})", (name, *versions))
            conn.execute(f"DELETE FROM aliases WHERE name = ? AND version IN ({marks})", (name, *versions))
            (newest,) = conn.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
            if newest is not None:
                conn.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", (name, LATEST, newest))

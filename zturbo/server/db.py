"""The server's one SQLite file (`<data_dir>/zturbo.sqlite3`): history, and the queue journal.

One connection shared by HTTP threads and the worker, serialised by a lock. WAL mode: a reader never
waits for the writer, and a transaction that committed survives a `kill -9` of the server (it is in the
WAL file; `synchronous=NORMAL` only risks the last transactions on power loss, never corruption).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Database:
    def __init__(self, path: Path, schema: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        if schema:
            self._db.executescript(schema)

    def add_schema(self, schema: str) -> None:
        with self._lock:
            self._db.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def row(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def pragma(self, name: str) -> Any:
        return (self.row(f"PRAGMA {name}") or (None,))[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """`with db.transaction() as conn:` everything inside commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

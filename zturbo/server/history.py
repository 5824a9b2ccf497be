"""Prompt history and the output index, in the server's state database (`db.Database`).

The database lives in the data directory, never in a folder clients can name (`/view` once served
`output/.zturbo/history.sqlite3`, and an upload could replace it). Recording a job in history also
drops it from the queue journal (`journal.py`), in the same transaction: a job is queued or finished,
never both, never neither.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zturbo.server.db import Database
from zturbo.server.queue import stored_number

log = logging.getLogger(__name__)
SQLITE_MAX = 2**63 - 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL,
    item TEXT NOT NULL,
    outputs TEXT NOT NULL,
    meta TEXT NOT NULL,
    status TEXT,
    status_str TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    workflow_id TEXT,
    create_time INTEGER,
    start_time INTEGER,
    end_time INTEGER
);
CREATE TABLE IF NOT EXISTS outputs (
    prompt_id TEXT NOT NULL REFERENCES history(prompt_id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    filename TEXT NOT NULL,
    subfolder TEXT NOT NULL,
    type TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_by_prompt ON outputs(prompt_id);
CREATE INDEX IF NOT EXISTS outputs_by_file ON outputs(type, subfolder, filename);
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs TEXT NOT NULL,
    started INTEGER
);
"""


def legacy_db_path(output_dir: Path) -> Path:
    """Where versions before the data directory kept history (inside the output folder)."""
    return output_dir / ".zturbo" / "history.sqlite3"


def migrate_legacy_db(output_dir: Path, target: Path) -> bool:
    """Move an old `output/.zturbo/history.sqlite3` to `target` (once, when `target` is new)."""
    old = legacy_db_path(output_dir)
    if not old.is_file() or target.exists():
        return False
    conn = sqlite3.connect(str(old))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file
    finally:
        conn.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(old, target)
    for suffix in ("-wal", "-shm"):
        Path(str(old) + suffix).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something else lives there: leave it
        old.parent.rmdir()
    log.info("moved the history database from %s to %s", old, target)
    return True


@dataclass
class HistoryRecord:
    """One finished prompt; `item` is ComfyUI's `[number, prompt_id, prompt, extra_data, outputs]`."""

    item: list
    outputs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    status: dict | None = None
    interrupted: bool = False
    error: dict | None = None
    start_time: int | None = None
    end_time: int | None = None

    @property
    def prompt_id(self) -> str:
        return self.item[1]

    @property
    def extra_data(self) -> dict:
        return self.item[3] if isinstance(self.item[3], dict) else {}


@dataclass
class JobRow:
    """The light columns `/api/jobs` needs, read without parsing whole prompts."""

    prompt_id: str
    number: int | float | None
    status_str: str | None
    interrupted: bool
    error: dict | None
    outputs: dict
    workflow_id: str | None
    create_time: int | None
    start_time: int | None
    end_time: int | None


def _dump(value: Any) -> str:
    return json.dumps(value, default=str)


def _output_rows(record: HistoryRecord) -> list[tuple]:
    rows = []
    for node_id, node_out in record.outputs.items():
        if not isinstance(node_out, dict):
            continue
        for kind, items in node_out.items():
            for entry in items if isinstance(items, list) else []:
                if isinstance(entry, dict) and "filename" in entry:
                    rows.append(
                        (
                            record.prompt_id,
                            str(node_id),
                            kind,
                            entry["filename"],
                            entry.get("subfolder", ""),
                            entry.get("type", "output"),
                        )
                    )
    return rows


class HistoryStore:
    """Thread-safe history; `get_history` follows ComfyUI's `max_items`/`offset` semantics."""

    def __init__(self, db: Database | Path, max_items: int = 10000) -> None:
        self.db = db if isinstance(db, Database) else Database(db)
        self.db.add_schema(SCHEMA)
        self.path = self.db.path
        self.max_items = max_items

    def close(self) -> None:
        self.db.close()

    def contains(self, prompt_id: str) -> bool:
        return self.db.row("SELECT 1 FROM history WHERE prompt_id = ?", (prompt_id,)) is not None

    def add(self, record: HistoryRecord) -> None:
        extra = record.extra_data
        workflow = (extra.get("extra_pnginfo") or {}).get("workflow") or {}
        values = (
            record.prompt_id,
            record.item[0],
            _dump(record.item),
            _dump(record.outputs),
            _dump(record.meta),
            _dump(record.status),
            (record.status or {}).get("status_str"),
            int(record.interrupted),
            _dump(record.error) if record.error is not None else None,
            workflow.get("id") if isinstance(workflow, dict) else None,
            extra.get("create_time"),
            record.start_time,
            record.end_time,
        )
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM history WHERE prompt_id = ?", (record.prompt_id,))
            conn.execute(
                "INSERT INTO history (prompt_id, number, item, outputs, meta, status, status_str, interrupted,"
                " error, workflow_id, create_time, start_time, end_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )
            conn.executemany("INSERT INTO outputs VALUES (?,?,?,?,?,?)", _output_rows(record))
            conn.execute("DELETE FROM queue WHERE prompt_id = ?", (record.prompt_id,))
            conn.execute(
                "DELETE FROM history WHERE seq NOT IN (SELECT seq FROM history ORDER BY seq DESC LIMIT ?)",
                (self.max_items,),
            )

    def count(self) -> int:
        return self.db.row("SELECT COUNT(*) FROM history")[0]  # type: ignore[index]

    def get(self, prompt_id: str) -> dict | None:
        row = self.db.row("SELECT item, outputs, status, meta FROM history WHERE prompt_id = ?", (prompt_id,))
        return _comfy_entry(row) if row else None

    def get_history(self, max_items: int | None = None, offset: int | None = None) -> dict[str, dict]:
        """Oldest first, like ComfyUI: no offset (or a negative one) means "the newest `max_items`".

        Both are clamped to what SQLite's 64-bit integers hold (a larger one means "all" anyway)."""
        max_items = None if max_items is None else min(max_items, SQLITE_MAX)
        offset = None if offset is None else min(offset, SQLITE_MAX)
        with self.db.transaction() as conn:
            total = conn.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            if offset is None or offset < 0:
                offset = max(total - max_items, 0) if max_items is not None else 0
            limit = -1 if max_items is None else max(max_items, 0)
            rows = conn.execute(
                "SELECT prompt_id, item, outputs, status, meta FROM history ORDER BY seq LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return {row[0]: _comfy_entry(row[1:]) for row in rows}

    def delete(self, prompt_ids: list[str]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("DELETE FROM history WHERE prompt_id = ?", [(p,) for p in prompt_ids])

    def clear(self) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM history")

    def job_rows(self, prompt_id: str | None = None) -> list[JobRow]:
        query = (
            "SELECT prompt_id, number, status_str, interrupted, error, outputs, workflow_id, create_time,"
            " start_time, end_time FROM history"
        )
        args: tuple = ()
        if prompt_id is not None:
            query, args = query + " WHERE prompt_id = ?", (prompt_id,)
        rows = self.db.rows(query + " ORDER BY seq", args)
        return [
            JobRow(
                r[0],
                stored_number(r[1]),
                r[2],
                bool(r[3]),
                json.loads(r[4]) if r[4] else None,
                json.loads(r[5]),
                r[6],
                r[7],
                r[8],
                r[9],
            )
            for r in rows
        ]

    def find_output(self, filename: str, subfolder: str = "", folder_type: str = "output") -> str | None:
        """Which prompt wrote this file (the output index), or None."""
        row = self.db.row(
            "SELECT prompt_id FROM outputs WHERE type = ? AND subfolder = ? AND filename = ? LIMIT 1",
            (folder_type, subfolder, filename),
        )
        return row[0] if row else None


def _comfy_entry(row: tuple) -> dict:
    item, outputs, status, meta = row
    return {
        "prompt": json.loads(item),
        "outputs": json.loads(outputs),
        "status": json.loads(status),
        "meta": json.loads(meta),
    }

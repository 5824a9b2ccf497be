"""Prompt history and the output index in SQLite, under `<output_dir>/.zturbo/history.sqlite3`.

Living next to the images means history moves with the output folder and survives restarts. WAL mode
lets readers (HTTP threads) proceed while the worker thread writes; one lock serialises our own use of
the shared connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
"""


def db_path_for(output_dir: Path) -> Path:
    return output_dir / ".zturbo" / "history.sqlite3"


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
    number: float | None
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

    def __init__(self, path: Path, max_items: int = 10000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_items = max_items
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

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
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM history WHERE prompt_id = ?", (record.prompt_id,))
            self._db.execute(
                "INSERT INTO history (prompt_id, number, item, outputs, meta, status, status_str, interrupted,"
                " error, workflow_id, create_time, start_time, end_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )
            self._db.executemany("INSERT INTO outputs VALUES (?,?,?,?,?,?)", _output_rows(record))
            self._trim()

    def _trim(self) -> None:
        self._db.execute(
            "DELETE FROM history WHERE seq NOT IN (SELECT seq FROM history ORDER BY seq DESC LIMIT ?)",
            (self.max_items,),
        )

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]

    def get(self, prompt_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT item, outputs, status, meta FROM history WHERE prompt_id = ?", (prompt_id,)
            ).fetchone()
        return _comfy_entry(row) if row else None

    def get_history(self, max_items: int | None = None, offset: int | None = None) -> dict[str, dict]:
        """Oldest first, like ComfyUI: no offset (or a negative one) means "the newest `max_items`"."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            if offset is None or offset < 0:
                offset = max(total - max_items, 0) if max_items is not None else 0
            limit = -1 if max_items is None else max(max_items, 0)
            rows = self._db.execute(
                "SELECT prompt_id, item, outputs, status, meta FROM history ORDER BY seq LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return {row[0]: _comfy_entry(row[1:]) for row in rows}

    def delete(self, prompt_ids: list[str]) -> None:
        with self._lock, self._db:
            self._db.executemany("DELETE FROM history WHERE prompt_id = ?", [(p,) for p in prompt_ids])

    def clear(self) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM history")

    def job_rows(self, prompt_id: str | None = None) -> list[JobRow]:
        query = (
            "SELECT prompt_id, number, status_str, interrupted, error, outputs, workflow_id, create_time,"
            " start_time, end_time FROM history"
        )
        args: tuple = ()
        if prompt_id is not None:
            query, args = query + " WHERE prompt_id = ?", (prompt_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [
            JobRow(
                r[0],
                r[1],
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
        with self._lock:
            row = self._db.execute(
                "SELECT prompt_id FROM outputs WHERE type = ? AND subfolder = ? AND filename = ? LIMIT 1",
                (folder_type, subfolder, filename),
            ).fetchone()
        return row[0] if row else None


def _comfy_entry(row: tuple) -> dict:
    item, outputs, status, meta = row
    return {
        "prompt": json.loads(item),
        "outputs": json.loads(outputs),
        "status": json.loads(status),
        "meta": json.loads(meta),
    }

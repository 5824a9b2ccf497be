"""The queue, written down: every accepted prompt has a row in the state database until it is in
history (`HistoryStore.add` removes the row in the same transaction), so a crash loses no job.

On start, `QueueJournal.load` gives back what a previous process left: the prompt that was running
when it died (`started` set) and the ones still waiting. The server re-queues the waiting ones in their
order and marks the one that was running as failed rather than running it again: it may be what
brought the server down (out of memory, a driver crash), and a job that kills the server on every
start would never let the queue behind it run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from zturbo.server.db import Database
from zturbo.server.queue import QueueItem, stored_number


@dataclass
class JournalRow:
    item: QueueItem
    started: int | None  # ms since the epoch when it began running, None while it waited


class QueueJournal:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, item: QueueItem) -> None:
        """Before the prompt is queued: a crash right after must find it."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO queue (prompt_id, number, prompt, extra_data, outputs) VALUES (?,?,?,?,?)",
                (
                    item.prompt_id,
                    item.number,
                    json.dumps(item.prompt),
                    json.dumps(item.extra_data),
                    json.dumps(item.outputs),
                ),
            )

    def started(self, prompt_id: str, when_ms: int) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE queue SET started = ? WHERE prompt_id = ?", (when_ms, prompt_id))

    def remove(self, prompt_ids: list[str]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("DELETE FROM queue WHERE prompt_id = ?", [(p,) for p in prompt_ids])

    def contains(self, prompt_id: str) -> bool:
        return self.db.row("SELECT 1 FROM queue WHERE prompt_id = ?", (prompt_id,)) is not None

    def load(self) -> list[JournalRow]:
        """Every row, in the order the prompts were accepted."""
        rows = self.db.rows(
            "SELECT number, prompt_id, prompt, extra_data, outputs, started FROM queue ORDER BY seq"
        )
        return [
            JournalRow(
                QueueItem(
                    stored_number(number) or 0,
                    prompt_id,
                    json.loads(prompt),
                    json.loads(extra),
                    json.loads(outputs),
                ),
                started,
            )
            for number, prompt_id, prompt, extra, outputs, started in rows
        ]

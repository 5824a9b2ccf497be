"""What a new server does with the jobs a previous one left in the queue journal (crash, `kill -9`,
power loss): waiting prompts are queued again in their order; the prompt that was running is recorded
as failed (see `journal.py` for why it is not re-run), its half-written files are removed, and its
client is told when it reconnects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from zturbo.server.history import HistoryRecord, HistoryStore
from zturbo.server.journal import QueueJournal
from zturbo.server.queue import PromptQueue
from zturbo.server.worker import crash_messages, end_events, now_ms

log = logging.getLogger(__name__)
# What `output.png.atomic_write` and the upload route name their files while writing them.
PARTIAL_PATTERNS = (".tmp-*", ".upload-*.part")
RESTART_MESSAGE = (
    "the server stopped while this prompt was running (crash, kill or power loss); "
    "it was not run again: queue it again if you want it"
)


class ServerStopped(Exception):
    """The reason recorded for a prompt that was running when the server died."""


@dataclass
class Recovery:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    partial_files: list[Path] = field(default_factory=list)
    # Per client id: the end events of its failed prompts, delivered when it connects.
    notices: dict[str, list[tuple[str, dict]]] = field(default_factory=dict)


def remove_partial_files(folders: list[Path], since_ms: int) -> list[Path]:
    """Our temp files written since `since_ms` (the dead job's start): never complete, never served."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for pattern in PARTIAL_PATTERNS:
            for path in folder.rglob(pattern):
                try:
                    if (
                        path.is_file()
                        and not path.is_symlink()
                        and path.stat().st_mtime * 1000 >= since_ms - 2000
                    ):
                        path.unlink()
                        removed.append(path)
                except OSError as exc:
                    log.warning("could not remove the partial file %s: %s", path, exc)
    return removed


def recover(
    journal: QueueJournal, history: HistoryStore, queue: PromptQueue, folders: list[Path]
) -> Recovery:
    found = Recovery()
    rows = journal.load()
    for row in rows:
        item = row.item
        if history.contains(item.prompt_id):  # finished just before the crash: the journal row is stale
            journal.remove([item.prompt_id])
            continue
        if row.started is None:
            queue.put(item)
            found.requeued.append(item.prompt_id)
            continue
        messages, error = crash_messages(item.prompt_id, ServerStopped(RESTART_MESSAGE), row.started)
        record = HistoryRecord(item=item.as_comfy(), start_time=row.started, end_time=now_ms())
        record.status = {"status_str": "error", "completed": False, "messages": messages}
        record.error = error
        history.add(record)
        found.failed.append(item.prompt_id)
        found.partial_files += remove_partial_files(folders, row.started)
        if item.client_id is not None:
            found.notices.setdefault(item.client_id, []).extend(
                end_events(item.prompt_id, ("execution_error", error))
            )
    if rows:
        queue.numbers_after(max(row.item.number for row in rows))
        log.warning(
            "recovered the queue of the previous run: %d prompt(s) queued again, %d that was running "
            "marked failed, %d partial file(s) removed",
            len(found.requeued),
            len(found.failed),
            len(found.partial_files),
        )
    return found

"""Everything a request may need, built once per app and kept on `app.state.zturbo` (no globals)."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from zturbo.errors import InputError
from zturbo.server.config import ServerConfig
from zturbo.server.db import Database
from zturbo.server.events import EventHub
from zturbo.server.history import HistoryRecord, HistoryStore, migrate_legacy_db
from zturbo.server.journal import QueueJournal
from zturbo.server.logs import LogFeed
from zturbo.server.pool import WorkerPool, start_pool
from zturbo.server.protocols import ExecutorLike, RegistryLike
from zturbo.server.queue import PromptQueue, QueueItem
from zturbo.server.recovery import Recovery, recover
from zturbo.server.worker import QueueWorker, end_events, now_ms

log = logging.getLogger(__name__)


class DuplicatePromptError(InputError):
    """A prompt id that is queued, running or finished already (its history entry must not be replaced)."""


@dataclass
class ServerState:
    config: ServerConfig
    executor: ExecutorLike
    registry: RegistryLike
    queue: PromptQueue
    history: HistoryStore
    hub: EventHub
    worker: QueueWorker | WorkerPool
    journal: QueueJournal
    recovery: Recovery = field(default_factory=Recovery)
    logs: LogFeed = field(default_factory=lambda: LogFeed(EventHub()))

    @property
    def folders(self) -> dict[str, Path]:
        assert self.config.temp_dir is not None  # resolved in ServerConfig.__post_init__
        return {
            "output": self.config.output_dir,
            "input": self.config.input_dir,
            "temp": self.config.temp_dir,
        }

    def queue_info(self) -> dict:
        """`{"exec_info": {"queue_remaining": N}}`, the body of `GET /prompt` and of `status` events."""
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def features(self) -> dict:
        """Server feature flags, for `GET /features` and the WebSocket `feature_flags` reply."""
        return {"supports_preview_metadata": True, "max_upload_size": self.config.max_upload_bytes}

    def broadcast_status(self) -> None:
        self.hub.send_sync("status", {"status": self.queue_info()})

    def known(self, prompt_id: str) -> bool:
        return (
            self.queue.contains(prompt_id)
            or self.history.contains(prompt_id)
            or self.journal.contains(prompt_id)
        )

    def submit(self, item: QueueItem) -> None:
        """Journal first, then queue: a prompt whose id was answered is never lost to a crash."""
        if self.known(item.prompt_id):
            raise DuplicatePromptError(f"prompt {item.prompt_id} was already submitted")
        try:
            self.journal.add(item)
        except sqlite3.IntegrityError:  # the same id, submitted at the same moment
            raise DuplicatePromptError(f"prompt {item.prompt_id} was already submitted") from None
        self.queue.put(item)

    def cancel_pending(self, prompt_ids: list[str]) -> list[str]:
        """Drop waiting prompts: each gets a `cancelled` history entry and its end events."""
        removed = self.queue.remove(prompt_ids)
        self._record_cancelled(removed)
        return [item.prompt_id for item in removed]

    def clear_pending(self) -> list[str]:
        removed = self.queue.clear()
        self._record_cancelled(removed)
        return [item.prompt_id for item in removed]

    def _record_cancelled(self, items: list[QueueItem]) -> None:
        for item in items:
            event: dict[str, object] = {
                "prompt_id": item.prompt_id,
                "node_id": None,
                "node_type": None,
                "executed": [],
            }
            message = ["execution_interrupted", {**event, "timestamp": now_ms()}]
            record = HistoryRecord(item=item.as_comfy(), end_time=now_ms(), interrupted=True)
            record.status = {"status_str": "error", "completed": False, "messages": [message]}
            try:
                self.history.add(record)
            except Exception:
                log.exception("could not record the cancelled prompt %s", item.prompt_id)
                self.journal.remove([item.prompt_id])
            self.worker.announce_end(item, end_events(item.prompt_id, ("execution_interrupted", event)))

    def take_notices(self, client_id: str) -> list[tuple[str, dict]]:
        """End events of this client's prompts that a crash interrupted (once)."""
        return self.recovery.notices.pop(client_id, [])


def open_database(config: ServerConfig) -> Database:
    migrate_legacy_db(config.output_dir, config.state_db)
    return Database(config.state_db)


def build_state(config: ServerConfig, executor: ExecutorLike, registry: RegistryLike) -> ServerState:
    hub = EventHub()
    queue = PromptQueue()
    db = open_database(config)
    history = HistoryStore(db, max_items=config.max_history)
    journal = QueueJournal(db)
    worker: QueueWorker | WorkerPool
    if config.pooled:
        worker = start_pool(config, queue, history, hub, journal)
    else:
        worker = QueueWorker(queue, executor, history, hub, previews_for=config.previews_for, journal=journal)
    state = ServerState(config, executor, registry, queue, history, hub, worker, journal, logs=LogFeed(hub))
    state.recovery = recover(journal, history, queue, list(state.folders.values()))
    queue.on_change = state.broadcast_status
    return state

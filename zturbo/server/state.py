"""Everything a request may need, built once per app and kept on `app.state.zturbo` (no globals)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zturbo.server.config import ServerConfig
from zturbo.server.events import EventHub
from zturbo.server.history import HistoryStore, db_path_for
from zturbo.server.protocols import ExecutorLike, RegistryLike
from zturbo.server.queue import PromptQueue
from zturbo.server.worker import QueueWorker


@dataclass
class ServerState:
    config: ServerConfig
    executor: ExecutorLike
    registry: RegistryLike
    queue: PromptQueue
    history: HistoryStore
    hub: EventHub
    worker: QueueWorker

    @property
    def folders(self) -> dict[str, Path]:
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


def build_state(config: ServerConfig, executor: ExecutorLike, registry: RegistryLike) -> ServerState:
    hub = EventHub()
    queue = PromptQueue()
    history = HistoryStore(db_path_for(config.output_dir), max_items=config.max_history)
    worker = QueueWorker(queue, executor, history, hub, previews_for=config.previews_for)
    state = ServerState(config, executor, registry, queue, history, hub, worker)
    queue.on_change = state.broadcast_status
    return state

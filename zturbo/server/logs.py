"""The server's own log records for the ComfyUI frontend's Logs panel (`/internal/logs*`, `logs` events).

ComfyUI keeps the console's recent output as entries `{"t": ISO time, "m": text}`; the panel reads them
from `/internal/logs/raw`, then subscribes (`PATCH /internal/logs/subscribe`) and gets each new entry
as a `logs` WebSocket message `{"entries": [...], "size": {"cols", "rows"}}`. `LogFeed` is a logging
handler on the root logger (what the console shows, at its level), attached while the app runs.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import deque
from datetime import datetime
from typing import Any

from zturbo.server.events import EventHub

MAX_ENTRIES = 1000
FORMAT = "%(levelname)s %(name)s: %(message)s"


def terminal_size() -> dict[str, int]:
    size = shutil.get_terminal_size()
    return {"cols": size.columns, "rows": size.lines}


class LogFeed(logging.Handler):
    """Recent records as ComfyUI log entries; new ones go to subscribed WebSocket clients."""

    def __init__(self, hub: EventHub, max_entries: int = MAX_ENTRIES) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter(FORMAT))
        self.hub = hub
        self.entries: deque[dict[str, str]] = deque(maxlen=max_entries)
        self.subscribers: set[str] = set()
        self._guard = threading.local()
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._guard, "busy", False):  # a record logged while sending one
            return
        self._guard.busy = True
        try:
            entry = {"t": datetime.now().isoformat(), "m": self.format(record) + "\n"}
            with self._lock:
                self.entries.append(entry)
                subscribers = list(self.subscribers)
            self._send([entry], subscribers)
        except Exception:
            self.handleError(record)
        finally:
            self._guard.busy = False

    def _send(self, entries: list[dict[str, str]], subscribers: list[str]) -> None:
        for sid in subscribers:
            if sid not in self.hub.clients:  # gone: unsubscribed, as ComfyUI does
                self.subscribe(sid, False)
                continue
            self.hub.send_sync("logs", {"entries": entries, "size": terminal_size()}, sid)

    def subscribe(self, client_id: str, enabled: bool) -> None:
        with self._lock:
            if enabled:
                self.subscribers.add(client_id)
            else:
                self.subscribers.discard(client_id)

    def snapshot(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.entries)

    def text(self) -> str:
        """`/internal/logs`: ComfyUI's one string, `t - m` per entry."""
        return "".join(f"{e['t']} - {e['m']}" for e in self.snapshot())

    def raw(self) -> dict[str, Any]:
        return {"entries": self.snapshot(), "size": terminal_size()}

    def attach(self) -> None:
        logging.getLogger().addHandler(self)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)

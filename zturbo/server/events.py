"""WebSocket fan-out: the worker thread hands messages to the event loop, each client drains its own
bounded queue.

A client that is slow or gone only loses its own messages; nothing it does can block the worker or
other clients. Messages are encoded once, on the sending thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_JPEG = 1
IMAGE_PNG = 2
CLIENT_QUEUE_SIZE = 4096
Frame = str | bytes


@dataclass
class Client:
    sid: str
    queue: asyncio.Queue[Frame] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE_SIZE))
    feature_flags: dict[str, Any] = field(default_factory=dict)
    dropped: int = 0

    def offer(self, frame: Frame) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("websocket client %s is not reading; dropping messages", self.sid)


def encode_json(event: str, data: Any) -> str:
    return json.dumps({"type": event, "data": data}, default=str)


def preview_frame(image: bytes, metadata: dict | None = None) -> bytes:
    """ComfyUI binary preview: type 1 (`>I` 1, `>I` image type, bytes) or, with metadata, type 4
    (`>I` 4, `>I` JSON length, JSON, bytes)."""
    is_png = image[:8] == b"\x89PNG\r\n\x1a\n"
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, IMAGE_PNG if is_png else IMAGE_JPEG) + image
    meta = json.dumps({**metadata, "image_type": "image/png" if is_png else "image/jpeg"}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image


class EventHub:
    """Registry of connected clients. `send_sync` may be called from any thread."""

    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def connect(self, sid: str) -> Client:
        """Register on the event loop thread; a reconnect with the same id replaces the old socket."""
        client = Client(sid)
        self.clients[sid] = client
        return client

    def disconnect(self, client: Client) -> None:
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]

    def supports(self, sid: str | None, flag: str) -> bool:
        client = self.clients.get(sid) if sid else None
        return bool(client and client.feature_flags.get(flag) is True)

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        """JSON event to `sid`, or to everyone when `sid` is None (ComfyUI broadcasts then)."""
        self.send_frame_sync(encode_json(event, data), sid)

    def send_frame_sync(self, frame: Frame, sid: str | None = None) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        # RuntimeError: the loop closed between the check and the call, i.e. the server is stopping.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._dispatch, frame, sid)

    def _dispatch(self, frame: Frame, sid: str | None) -> None:
        if sid is None:
            targets = list(self.clients.values())
        else:
            targets = [self.clients[sid]] if sid in self.clients else []
        for client in targets:
            client.offer(frame)

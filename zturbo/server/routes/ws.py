"""`/ws?clientId=`: ComfyUI's event stream.

On connect the client gets `status` with its `sid`; a first message `{"type": "feature_flags"}` is
answered with the server's flags. A reader and a writer run in one task group: when either ends (the
client left, a send failed) the other is cancelled, and only this connection is affected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import anyio
from anyio import CancelScope
from fastapi import APIRouter, WebSocket

from zturbo.server.deps import State
from zturbo.server.events import Client, encode_json
from zturbo.server.state import ServerState

log = logging.getLogger(__name__)
router = APIRouter(tags=["ws"])


async def _write(websocket: WebSocket, client: Client, scope: CancelScope) -> None:
    try:
        while True:
            frame = await client.queue.get()
            if isinstance(frame, bytes):
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame)
    except Exception as exc:  # the client went away mid-send: end this connection only
        log.debug("websocket %s send failed: %r", client.sid, exc)
    finally:
        scope.cancel()


def _handle(text: str, first: bool, client: Client, state: ServerState) -> None:
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        log.warning("invalid JSON from websocket client %s", client.sid)
        return
    if first and isinstance(message, dict) and message.get("type") == "feature_flags":
        data = message.get("data")
        client.feature_flags = data if isinstance(data, dict) else {}
        client.offer(encode_json("feature_flags", state.features()))


async def _read(websocket: WebSocket, client: Client, state: ServerState) -> None:
    first = True
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            _handle(message["text"], first, client, state)
            first = False


def _greet(client: Client, state: ServerState) -> None:
    client.offer(encode_json("status", {"status": state.queue_info(), "sid": client.sid}))
    channel = state.worker.channel
    if channel is not None and channel.client_id == client.sid and channel.last_node is not None:
        # A client reconnecting mid-job learns which node is running, as in ComfyUI.
        client.offer(encode_json("executing", {"node": channel.last_node, "prompt_id": channel.prompt_id}))


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket, state: State) -> None:
    await websocket.accept()
    state.hub.bind_loop(asyncio.get_running_loop())
    client = state.hub.connect(websocket.query_params.get("clientId") or uuid.uuid4().hex)
    _greet(client, state)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_write, websocket, client, group.cancel_scope)
            await _read(websocket, client, state)
            group.cancel_scope.cancel()
    finally:
        state.hub.disconnect(client)

"""`/ws?clientId=`: ComfyUI's event stream.

On connect the client gets `status` with its `sid` (then, after a crash, the end events of its prompts
that died with the old server); a first message `{"type": "feature_flags"}` is answered with the
server's flags. Anything else a client sends is ignored, however malformed (deep nesting, huge numbers,
lone surrogates). A reader and a writer run in one task group: when either ends (the client left, a
send failed) the other is cancelled, and only this connection is affected.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import anyio
from anyio import CancelScope
from fastapi import APIRouter, WebSocket

from zturbo.errors import InputError
from zturbo.server import json_input
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
        message = json_input.loads(text, "websocket message")
    except InputError as exc:
        log.warning("ignoring a message from websocket client %s: %s", client.sid, exc)
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
            try:
                _handle(message["text"], first, client, state)
            except Exception:  # nothing a client sends may end its connection
                log.exception("websocket client %s: message handling failed", client.sid)
            first = False


def _greet(client: Client, state: ServerState) -> None:
    client.offer(encode_json("status", {"status": state.queue_info(), "sid": client.sid}))
    channel = state.worker.channel_for(client.sid)
    if channel is not None and channel.last_node is not None:
        # A client reconnecting mid-job learns which node is running, as in ComfyUI.
        client.offer(encode_json("executing", {"node": channel.last_node, "prompt_id": channel.prompt_id}))
    for event, data in state.take_notices(client.sid):
        client.offer(encode_json(event, data))


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

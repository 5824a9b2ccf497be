"""JSON request bodies: accepted however the client labels them (as ComfyUI does), and parsed strictly
once, before routing.

ComfyUI parses every POST body as JSON whatever its Content-Type, and real clients rely on that:
`requests.post(url, data=json.dumps(...))` sends no Content-Type, and urllib (used by ComfyUI's own
API examples) labels the body `application/x-www-form-urlencoded`, and aiohttp's raw `data=bytes`
(comfy-catapult) labels it `application/octet-stream`. FastAPI would answer those with 422,
so unlabelled, form-labelled and text-labelled bodies are relabelled as JSON before routing. Multipart
uploads keep their type.

Every JSON body then goes through `json_input.loads` (lone surrogates, NaN, huge numbers and deep
nesting are a 400 naming the place, instead of a 500 later); large bodies are parsed in a worker
thread so the event loop keeps answering. The parsed value is left in `scope["state"]` for routes that
want it (`/prompt`) instead of parsing twice. `/userdata` files are opaque bytes and pass untouched.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zturbo.errors import InputError
from zturbo.server import json_input
from zturbo.server.errors import error_response

RELABEL = (b"", b"application/x-www-form-urlencoded", b"text/plain", b"application/octet-stream")
OPAQUE_PREFIXES = ("/userdata/", "/api/userdata/")
# Bodies above this are parsed off the event loop.
THREAD_PARSE_BYTES = 64 * 1024
PARSED_KEY = "zturbo_json_body"


def parsed_body(scope: Scope) -> tuple[bool, object]:
    """(True, value) when the middleware parsed this request's body, else (False, None)."""
    state = scope.get("state") or {}
    return (True, state[PARSED_KEY]) if PARSED_KEY in state else (False, None)


def json_object(scope: Scope) -> dict:
    """The JSON object body the middleware parsed (strictly, once); InputError for anything else."""
    _, value = parsed_body(scope)
    if not isinstance(value, dict):
        raise InputError("the body must be a JSON object")
    return value


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        kind = content_type.split(b";")[0].strip().lower()
        if kind in RELABEL:
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
            kind = b"application/json"
        if kind != b"application/json" or scope.get("path", "").startswith(OPAQUE_PREFIXES):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body.strip():
            try:
                if len(body) > THREAD_PARSE_BYTES:
                    value = await anyio.to_thread.run_sync(json_input.loads, body)
                else:
                    value = json_input.loads(body)
            except InputError as exc:
                await error_response(exc)(scope, receive, send)
                return
            scope.setdefault("state", {})[PARSED_KEY] = value
        await self.app(scope, _replay(body, receive), send)

"""ASGI middleware that guards every route, WebSocket included.

- Cross-origin protection as ComfyUI does it: a browser page on another site must not be able to queue
  jobs on a loopback server (browsers let any page POST to 127.0.0.1). Reject `Sec-Fetch-Site:
  cross-site`, and an `Origin` whose host differs from a loopback `Host`.
- Bearer-token auth, required when the server listens on a non-loopback address.
- Body size limits (413), checked on `Content-Length` and again while the body streams in.

Pure ASGI (not `BaseHTTPMiddleware`) so the same checks cover `websocket` scopes.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse

from zturbo.server.config import is_loopback_host
from zturbo.server.errors import PayloadTooLargeError, error_response

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_PREFIXES = ("/upload/", "/api/upload/")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _reject(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        # Closing before accept makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": message})
        return
    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def _split_host(value: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit("//" + value.strip().lower())
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def cross_origin_reason(headers: dict[str, str]) -> str | None:
    """Why a request looks cross-site, or None when it may pass."""
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "cross-site request refused"
    origin, host = headers.get("origin"), headers.get("host")
    if origin is None or host is None:
        return None
    host_name, host_port = _split_host(host)
    if not is_loopback_host(host_name):
        return None
    if origin.strip().lower() == "null":
        return "opaque origin refused"
    try:
        parsed = urlsplit(origin.strip().lower())
        origin_name, origin_port = parsed.hostname, parsed.port
    except ValueError:
        return "malformed origin refused"
    if not origin_name:
        return None
    # Like ComfyUI: compare ports only when both sides name one (some browsers drop default ports).
    same = origin_name == host_name and (origin_port is None or host_port is None or origin_port == host_port)
    return None if same else f"origin {origin!r} does not match host {host!r}"


class OriginGuardMiddleware:
    """403 for cross-site requests to a loopback server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            reason = cross_origin_reason(_headers(scope))
            if reason is not None:
                log.warning("refused %s %s: %s", scope["type"], scope.get("path"), reason)
                await _reject(scope, receive, send, 403, reason)
                return
        await self.app(scope, receive, send)


def request_token(scope: Scope) -> str | None:
    """The token from `Authorization: Bearer ...`, else from `?token=`."""
    auth = _headers(scope).get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("token")
    return values[0] if values else None


class TokenAuthMiddleware:
    """401 unless the request carries the configured token (constant-time compare)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            given = request_token(scope)
            if given is None or not hmac.compare_digest(given.encode(), self.token):
                await _reject(scope, receive, send, 401, "missing or invalid auth token")
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over the limit: uploads get `upload_limit`, everything else `request_limit`."""

    def __init__(self, app: ASGIApp, request_limit: int, upload_limit: int) -> None:
        self.app = app
        self.request_limit = request_limit
        self.upload_limit = upload_limit

    def limit_for(self, path: str) -> int:
        return self.upload_limit if path.startswith(UPLOAD_PREFIXES) else self.request_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _headers(scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(PayloadTooLargeError(f"request body over {limit} bytes"))(
                scope, receive, send
            )
            return
        guard = _BodyGuard(receive, send, limit)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.exceeded:
                raise
        await guard.finish(scope)


class _BodyGuard:
    """Counts body bytes as they stream in; once over the limit, the app's own answer (whatever a
    framework made of the aborted read) is replaced by a 413."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive, self._send, self.limit = receive, send, limit
        self.seen = 0
        self.exceeded = False
        self.started = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                raise PayloadTooLargeError(f"request body over {self.limit} bytes")
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def finish(self, scope: Scope) -> None:
        if self.exceeded and not self.started:
            response = error_response(PayloadTooLargeError(f"request body over {self.limit} bytes"))
            await response(scope, self._receive, self._send)
